"""Pure ranking: heap merge of shard answers, fusion of spaces (RRF, weighted RRF, DBSF) and the post-fusion stages
(formula, MMR, group-by, explain).

May import: schema, filters, shards, cluster (docs/architecture.md; tests/unit/test_architecture.py).
"""
