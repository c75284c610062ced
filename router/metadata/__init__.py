"""The Elasticsearch side of a collection: the metadata store (client, indices, documents) and the metadata steps of a
query and a write (filter questions, post-filter rounds, BM25, write-through).

May import: replication, ranking, schema, filters, shards, cluster (docs/architecture.md; tests/unit/test_architecture.py).
"""
