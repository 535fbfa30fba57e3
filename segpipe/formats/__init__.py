"""File formats: COCO panoptic codecs, the Parquet schemas, Label Studio brush RLE."""
