"""The bundled Milvus server, started one at a time on this machine.

Milvus 2.3 standalone (the PyPI `milvus` package) picks its component ports by probing upward from where it is told
and binds them seconds later. cluster/milvus_launcher.py now starts every probe at a port chosen free (it used the
package's fixed defaults, 53100, ..., and two xdist workers' servers collided: "bind: address already in use", exit
250). The suite's starts still take turns under one lock file in the system temp dir, and a start that lost a port
race anyway is tried again, so a start-up race on a busy machine never fails a test that is about something else."""
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
