"""prism shards: the shard contract (api), the Milvus backend, the plain shard, its in-process and Ray clients."""
