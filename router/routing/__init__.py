"""Pure routing: where a point lives and which shards a query must visit. Coarse centroids by k-means over a
collection's routing space (kmeans), their balanced assignment to shards (balance), the placement a collection
routes by - hash, vector or key - with its JSON form (placement), the key of a point and the shards a filter pins
(keys), and the checks of the `routing` setting and the query field `probe` (settings).

No Ray, no Milvus, no I/O: numpy and the floor's ring and errors only.
May import: cluster.ring, cluster.errors (docs/architecture.md; tests/unit/test_routing.py reads the imports).
"""
