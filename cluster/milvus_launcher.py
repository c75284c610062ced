"""Runs the bundled Milvus 2.3 standalone in the foreground with fixed ports: `python -m cluster.milvus_launcher DIR PORT HEALTH_PORT`.

The `milvus-server` CLI picks its health port itself, its components' ports by probing up from fixed defaults, and
its embedded etcd always takes peer port 2380, so a second server on the machine could die at start. Here all of
them start from ports chosen free, and etcd gets a config file of its own.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path

from cluster.services import free_port

# The proxy's time-tick interval (ms; Milvus's default 200): a Strong read, and so a writer's wait=true, waits
# for the next tick. Measured in docs/benchmarks.md (freshness: the tuning rows).
TIME_TICK_MS = 200
# The lease of each component's session in the embedded etcd (s; Milvus's default 30). The package's stop SIGKILLs
# Milvus a second after SIGTERM, and even left to stop on its own it leaves its sessions behind, so a restart on the
# same data waits until their leases run out (rootcoord retries "CompareAndSwap ... false for key: rootcoord"
# meanwhile): 54-56 s measured at 30, 26 s at 10. Keep-alives go every ttl/3 to an etcd in the same process.
SESSION_TTL_S = 10
AUTH_ENV = "PRISM_MILVUS_AUTHORIZATION"  # "1": the server requires a user and password (common.security)


def _bind_reusable(port: int) -> socket.socket | None:
    """The package's free-port probe, with SO_REUSEADDR as the server itself binds: a restart on the same ports
    must not be pushed to others by the TIME_WAIT connections its clients left (the clients would dial the old
    port forever). A port some process really listens on still fails."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        return sock
    except OSError:
        sock.close()
        return None


def pin_component_ports(config, pick=free_port) -> dict[str, int]:
    """Start every component's port probe (rootcoord, datacoord, querynode, ... and proxy's internal port) at a port
    the OS calls free, for each `*_port` item not set already. The package probes upward from fixed defaults (53100,
    ...) and binds seconds later, so two servers starting at once picked the same port and one died ("bind: address
    already in use", exit 250). Returns what it set."""
    chosen = {}
    for key, (kind, value) in list(config.configurable_items.items()):
        if key.endswith("_port") and key not in ("proxy_port", "etcd_port"):
            chosen[key] = pick()
            config.set(key, chosen[key])
    return chosen


def main(argv: list[str]) -> int:
    import milvus

    data_dir, port, health_port = argv[0], int(argv[1]), int(argv[2])
    time_tick_ms = int(argv[3]) if len(argv) > 3 else TIME_TICK_MS
    server = milvus.MilvusServer(wait_for_started=False)
    server.set_base_dir(data_dir)
    server.config.set("proxy_port", port)
    server.config.set("etcd_port", free_port())
    pin_component_ports(server.config)
    server.webservice_port = health_port  # start() probes upward from here; it is free, so it is kept

    write_config = server.config.write_config

    def write_with_etcd_config() -> None:
        write_config()
        client, peer = server.config.get("etcd_port"), free_port()
        etcd_yaml = Path(data_dir) / "configs" / "embed-etcd.yaml"
        etcd_yaml.write_text(
            f"listen-client-urls: http://127.0.0.1:{client}\nadvertise-client-urls: http://127.0.0.1:{client}\n"
            f"listen-peer-urls: http://127.0.0.1:{peer}\ninitial-advertise-peer-urls: http://127.0.0.1:{peer}\n"
            f"initial-cluster: default=http://127.0.0.1:{peer}\n"
        )
        cfg = Path(data_dir) / "configs" / "milvus.yaml"
        text = cfg.read_text().replace("etcd:\n", f"etcd:\n  config:\n    path: {etcd_yaml}\n", 1)
        for default, ours in (("timeTickInterval: 200 #", f"timeTickInterval: {time_tick_ms} #"),
                              ("ttl: 30 # ttl value when session", f"ttl: {SESSION_TTL_S} # ttl value when session")):
            if default not in text:  # another package version: say so rather than run on its defaults unnoticed
                raise RuntimeError(f"milvus.yaml has no {default!r} to set: the milvus package changed its template")
            text = text.replace(default, ours, 1)
        cfg.write_text(text)

    server.config.write_config = write_with_etcd_config
    server.config.try_bind_port = _bind_reusable
    # Milvus 2.3 has no setting for the address it listens on (every port binds all interfaces), so its client
    # port at least asks for credentials (cluster.services.start_milvus_server sets root's password).
    if os.environ.get(AUTH_ENV) == "1":
        server.config.set("authorization_enabled", True)


    def _stop(*_):
        server.stop()
        sys.exit(0)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    server.start()
    print(f"milvus pid={server.server_proc.pid} port={port} health={health_port}", flush=True)
    return server.server_proc.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
