"""A shard's replicas kept in step: the replica set and its view, replicated reads (failover, hedging) and writes
(quorum, refusal rules), repair and anti-entropy, the operation log and the sequencer with its journal and its Ray
actor shell, cross-request batching, the supervised heal loop.

May import: schema, filters, shards, cluster (docs/architecture.md; tests/unit/test_architecture.py).
"""
