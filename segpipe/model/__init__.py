"""Models: loading checkpoints, the segmenter stage, and batched post-processing."""
