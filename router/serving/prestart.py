"""Start-up speed of the ingress: the catalog's shard replica and sequencer actors are launched while the encoders
load, so their processes start together instead of one after the other (issue 27). Nothing is opened or checked
here: `PrismService.open_catalog` finds these actors by name and does that as it always has."""
from __future__ import annotations

import logging

from cluster.config import ClusterConfig
from router.collection.catalog import Catalog
from router.replication.ray_sequencer import launch_ray_sequencers
from shards.actor import start_ray_shards
from shards.local import replica_specs

log = logging.getLogger("prism.ingress")


def prestart_catalog(cfg: ClusterConfig, server_uri: str | None) -> None:
    """Launch the shard replica and sequencer actors of every collection in the catalog, all at once and without
    waiting for any: `open_catalog` then finds them by name (same names, same arguments), opens their collections
    and reads the sequencers' views, checking everything as it always does. A failure here is only logged: the
    open that follows meets it again and reports it."""
    try:
        catalog = Catalog(cfg.data_path / "catalog")
        for name in catalog.names():
            entry = catalog.read(name)
            if entry is None:
                continue
            specs = replica_specs(entry.config, cfg.milvus, cfg.data_path, server_uri)
            start_ray_shards(entry.config, specs, detached=True, create=False, placement=cfg.placement,
                             batching=cfg.batching)
            launch_ray_sequencers(entry.config, specs, cfg.data_path, timeout_s=cfg.shard_timeout_s, detached=True,
                                  placement=cfg.placement, replication=cfg.replication, snapshots=cfg.snapshots)
    except Exception as exc:  # noqa: BLE001 - the open that follows reports it
        log.warning("starting the catalog's actors early failed (%s: %s); they start when it is opened",
                    type(exc).__name__, exc)
