"""prism router: everything between a request and the shards, as a stack of packages by job (docs/architecture.md):
serving > collection > {metadata, encoding} > {replication, ranking, routing} > schema > filters. Each imports only
those below it (tests/unit/test_architecture.py). This file imports nothing: it runs before every router module."""
