"""One shard's stages: fetch, decode, batch, segment, write, and how they overlap."""
