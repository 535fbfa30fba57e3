"""The destination protocol: keys, runs and plans, the shard writer, the reader of
committed shards, the merged panoptic file and incremental runs."""
