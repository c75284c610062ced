"""The Elasticsearch side of a collection: the metadata store (client, indices, documents) and its steps
(MetadataSteps) in queries and writes (filter questions, post-filter rounds, BM25, counts, write-through, delete by
filter, verify).

May import: replication, ranking, schema, filters, shards, cluster (docs/architecture.md; tests/unit/test_architecture.py).
"""
