"""The bundled Milvus server, started one at a time on this machine.

Milvus 2.3 standalone (the PyPI `milvus` package) picks its component ports (rootcoord 53100, datacoord, ...) by
probing upward from fixed defaults and binds them seconds later, so two servers starting at the same moment can pick
the same port and one dies ("bind: address already in use", exit 250; seen with two xdist workers). The suite's
starts take turns under one lock file in the system temp dir. A server that `prism up` starts itself is not covered
(cluster/milvus_launcher.py would need to choose every component port free, as it does for etcd)."""
from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

LOCK = Path(tempfile.gettempdir()) / "prism-tests-milvus-start.lock"


def start_milvus_server(data_dir: str | os.PathLike, *args, **kwargs):
    """cluster.services.start_milvus_server (same arguments and handle), holding the lock until it is healthy."""
    from cluster.services import start_milvus_server as start

    with open(LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return start(data_dir, *args, **kwargs)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
