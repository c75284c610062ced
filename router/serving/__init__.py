"""The serving edge: the Ray Serve ingress (HTTP routes, middleware, encoder deployments, the app builder), the gRPC
servicer, the OpenAPI description, the access guard, metrics, and the Qdrant-compatible API (router.serving.qdrant).
The only package that imports fastapi, starlette, ray.serve or grpc.

May import: every router package below it, shards, cluster (docs/architecture.md; tests/unit/test_architecture.py).
"""
