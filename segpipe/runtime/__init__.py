"""The Ray layer: cluster start, shard workers and their pool."""
