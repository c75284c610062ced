"""The bundled Milvus server, started one at a time on this machine.

Milvus 2.3 standalone (the PyPI `milvus` package) picks its component ports (rootcoord 53100, datacoord, ...) by
probing upward from fixed defaults and binds them seconds later, so two servers starting at the same moment can pick
the same port and one dies ("bind: address already in use", exit 250; seen with two xdist workers). The suite's
starts take turns under one lock file in the system temp dir, and a start that lost such a race with a server the
lock does not cover (one `prism up` starts, another checkout's) is tried again: the port it lost is taken by then, so
the next probe passes it. The real fix is in cluster/milvus_launcher.py (choose every component port free, as it
does for etcd's)."""
from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

LOCK = Path(tempfile.gettempdir()) / "prism-tests-milvus-start.lock"


ATTEMPTS = 3
PORT_RACE = "bind: address already in use"


def start_milvus_server(data_dir: str | os.PathLike, *args, **kwargs):
    """cluster.services.start_milvus_server (same arguments and handle), holding the lock until it is healthy."""
    from cluster.errors import BackendError
    from cluster.services import start_milvus_server as start

    stderr = Path(data_dir).resolve() / "logs" / "milvus-stderr.log"
    with open(LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            for attempt in range(1, ATTEMPTS + 1):
                try:
                    return start(data_dir, *args, **kwargs)
                except BackendError:
                    # The server rewrites this log at each start: what it holds is this attempt's.
                    lost_a_port = stderr.exists() and PORT_RACE in stderr.read_text(errors="replace")
                    if attempt == ATTEMPTS or not lost_a_port:
                        raise
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
