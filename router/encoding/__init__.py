"""Turning a request into vectors: text and image encoders (embed), image decoding under a pixel budget, image URLs
fetched without SSRF, and the validation/embedding of every prefetch (vectors).

May import: replication, ranking, schema, filters, shards, cluster (docs/architecture.md; tests/unit/test_architecture.py).
"""
