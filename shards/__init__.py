"""prism shards: the Milvus backend, the plain shard and its Ray actor wrapper."""
