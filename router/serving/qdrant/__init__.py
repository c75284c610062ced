"""A Qdrant-compatible REST API under `/qdrant`: `QdrantClient(url="http://HOST:8000", prefix="qdrant")` works
against prism unchanged (README, "Coming from Qdrant").

What it holds: Qdrant's request shapes (models), its filters translated into prism's filter DSL (filters), point
ids mapped reversibly onto prism's string ids (ids), Qdrant's own fusion arithmetic (fusion), the translation of
collections, points and queries (collections, points, query), Qdrant-shaped errors (errors), the route policy the
guard applies (policy) and the FastAPI router (routes), mounted by router/serving/app.py with `mount(api)`.

What it may import (tests/unit/test_qdrant.py reads the imports): `router.collection.service.PrismService`, reached as this
replica's service through `router.serving.metrics.process_state()` (every read and write goes through it, so the guard,
limits, write-through and replication are prism's own); the pure modules `router.schema.bodies`, `router.collection.cursor`, `router.filters.dsl`,
`router.schema.query`, `cluster.collection_spec` (types), `cluster.errors` and `cluster.names`; FastAPI, pydantic and numpy.
Nothing in prism imports this package but router/serving/app.py (the mount), router/serving/access.py (the policy) and
router/serving/edge.py (the error shape of refusals).
"""
