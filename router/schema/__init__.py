"""What requests and answers are: the pydantic request/response models by API area and the rules a request body must
meet before it is read (size, content type, JSON depth, host).

May import: filters, shards, cluster (docs/architecture.md; tests/unit/test_architecture.py).
"""
