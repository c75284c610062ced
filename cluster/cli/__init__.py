"""Entry points, the top of the dependency order: the `prism` command (`main`, which puts together its commands from
`serve`, `collection` and `admin`, with `common` what they share), starting and stopping a local instance
(`bootstrap`), bulk ingestion (`ingest`) and `make demo` (`demo`). Nothing below imports from here."""
from cluster.cli.main import app

__all__ = ["app"]
