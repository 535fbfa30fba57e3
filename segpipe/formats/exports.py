"""The formats `segpipe export` writes, named in one place.

Kept apart from `segpipe.tools.export` so the CLI and job specs can check a format name
without importing the export stack.
"""

from __future__ import annotations

EXPORT_FORMATS = ("coco-instance", "cvat", "labelstudio", "coco-panoptic", "coco-results")
# The review tools whose exports `segpipe import --from` reads.
REVIEW_SOURCES = ("labelstudio", "cvat", "coco-panoptic")
