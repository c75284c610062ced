"""Filters, pure: the Elasticsearch-subset DSL, its values and translation to Milvus expressions, the dynamic mapping
of payload fields, and the filter plan (pushdown, prefilter, postfilter; search params a budget affords).

May import: shards, cluster (docs/architecture.md; tests/unit/test_architecture.py).
"""
