"""The review loop's way back: corrections imported from review tools, measured, and turned
into per-class score thresholds for the next run."""
