"""The bundled Milvus's component ports start from ports chosen free, not from the package's fixed defaults
(two servers starting at once probed up from 53100, ... and one died with "bind: address already in use")."""
from __future__ import annotations

import itertools

import milvus

from cluster.milvus_launcher import pin_component_ports


def _config():
    return milvus.MilvusServer(wait_for_started=False).config


def test_every_component_port_starts_where_it_was_told():
    config = _config()
    defaults = {k: v[1] for k, v in config.configurable_items.items() if k.endswith("_port")}
    picks = itertools.count(40001)
    chosen = pin_component_ports(config, pick=lambda: next(picks))
    components = set(defaults) - {"proxy_port", "etcd_port"}
    assert set(chosen) == components and len(components) >= 7  # rootcoord, datacoord, querynode, ...
    assert sorted(chosen.values()) == list(range(40001, 40001 + len(components)))
    # The package resolves each port by probing upward from the value set: it binds the chosen one when free.
    config.try_bind_port = lambda port: object()
    config.resolve_all_listen_ports()
    assert {k: config.configurable_items[k][1] for k in components} == chosen
    assert all(chosen[k] != defaults[k] for k in components)


def test_two_servers_get_no_common_component_port():
    a, b = _config(), _config()
    ports = itertools.count(41001)
    pin_component_ports(a, pick=lambda: next(ports))
    pin_component_ports(b, pick=lambda: next(ports))
    pa = {a.configurable_items[k][1] for k in a.configurable_items if k.endswith("_port")} - {None}
    pb = {b.configurable_items[k][1] for k in b.configurable_items if k.endswith("_port")} - {None}
    taken = {a.configurable_items[k][1] for k in ("proxy_port", "etcd_port")}
    assert (pa - taken).isdisjoint(pb - taken)
