"""One collection end to end: the service every entry point calls (PrismService), the catalog of collections, the
query pipeline (Coordinator, its shard-facing steps in pipeline), writes, inventory (scan, count, by id, scroll),
verify, reshard, strict limits, the result cache, scroll cursors, per-point locks and the lap timer.

May import: metadata, encoding, replication, ranking, schema, filters, shards, cluster (docs/architecture.md; tests/unit/test_architecture.py).
"""
