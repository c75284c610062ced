"""Runs the bundled Milvus 2.3 standalone in the foreground with fixed ports: `python -m cluster.milvus_launcher DIR PORT HEALTH_PORT`.

The `milvus-server` CLI picks its health port itself; prism needs to know it to poll readiness.
"""
from __future__ import annotations

import signal
import sys


def main(argv: list[str]) -> int:
    import milvus

    data_dir, port, health_port = argv[0], int(argv[1]), int(argv[2])
    server = milvus.MilvusServer(wait_for_started=False)
    server.set_base_dir(data_dir)
    server.config.set("proxy_port", port)
    server.webservice_port = health_port  # start() probes upward from here; it is free, so it is kept

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
