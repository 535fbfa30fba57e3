"""`segpipe import`: a review tool's export back into DST, validated whole before any write."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from segpipe.destination import reader
from segpipe.destination.reviews import reviewed_document
from segpipe.formats import coco
from segpipe.formats.exports import REVIEW_SOURCES
from segpipe.io.storage import Folder, redact_uri
from segpipe.labels import Category, load_categories
from segpipe.labels.categories import hash_color
from segpipe.review import overlaps
from segpipe.review.importers import coco_panoptic, cvat, labelstudio
from segpipe.review.outcomes import PreLabel, match_segments
from segpipe.review.reviewed import ImportBatch, ReviewImportError, check_size
from segpipe.review.store import PreparedImage, write_import
from segpipe.review.targets import Targets, read_input


def run_import(dst_url: str, source: str, path: str, *, image_root: str | None = None,
               add_categories: bool = False,
               storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Import one export into DST; returns what it did (counts, the import id)."""
    dst = reader.open_destination(dst_url, storage_options)
    shards = reader.require_committed(dst)
    targets = Targets(reader.iter_images(dst, shards=shards, rle=False), image_root)
    batch = _load(source, path, targets, storage_options)
    document = reviewed_document(dst)
    known = _known_categories(dst, shards, document)
    categories = _categories(batch, known, add_categories)
    prepared = [_prepare(dst, image, categories) for image in batch.images]
    all_categories = sorted({c.id: c for c in [*known, *categories.values()]}.values(),
                            key=lambda c: c.id)
    the_id, written = write_import(dst, document, source=source, input_name=redact_uri(path),
                                   images=[p for p, _ in prepared], categories=all_categories)
    outcomes = Counter(o.outcome for p, _ in prepared for o in p.outcomes)
    return {"import_id": the_id, "written": written, "images": len(prepared),
            "not_reviewed": batch.not_reviewed,
            "segments": {k: outcomes.get(k, 0) for k in
                         ("accepted", "edited", "relabeled", "deleted", "added")},
            "reassigned_pixels": sum(r for _, r in prepared),
            "added_categories": sorted(c.name for c in all_categories if c not in known)}


def _load(source: str, path: str, targets: Targets,
          storage_options: dict[str, Any] | None) -> ImportBatch:
    if source == "coco-panoptic":
        batch = coco_panoptic.load(path, targets, storage_options)
    elif source in ("labelstudio", "cvat"):
        module = labelstudio if source == "labelstudio" else cvat
        batch = module.load(read_input(path, storage_options), path, targets)
    else:
        raise ReviewImportError(f"unknown review source {source!r}; one of {', '.join(REVIEW_SOURCES)}")
    seen: dict[int, str] = {}
    for image in batch.images:
        check_size(image)
        first = seen.setdefault(image.target.image_id, image.item)
        if first != image.item:
            raise ReviewImportError(f"{path}: {first} and {image.item} both review "
                                    f"{image.target.image_uri}")
    return batch


def _known_categories(dst: Folder, shards: reader.Shards,
                      document: dict[str, Any] | None) -> list[Category]:
    """DST's label set, plus categories that earlier imports added."""
    known = {c.id: c for c in reader.categories(dst, shards)}
    for c in load_categories((document or {}).get("categories", [])):
        known.setdefault(c.id, c)
    return list(known.values())


def _categories(batch: ImportBatch, known: list[Category], add: bool) -> dict[str, Category]:
    """Each category name the export uses -> its category; unknown names are refused
    unless `add`, which gives them new ids (as things: a reviewer's new label is usually an
    object class; edit reviewed/panoptic.json's isthing if not)."""
    by_name = {c.name: c for c in known}
    next_id = max((c.id for c in known), default=0) + 1
    for image in batch.images:
        for mask in image.masks:
            if mask.category in by_name:
                continue
            if not add:
                raise ReviewImportError(
                    f"{image.item}: category {mask.category!r} is not in the destination's "
                    "label set (--add-categories accepts it as a new category)")
            by_name[mask.category] = Category(next_id, mask.category, True,
                                              hash_color(mask.category))
            next_id += 1
    return by_name


def _prepare(dst: Folder, image: Any, categories: dict[str, Category]
             ) -> tuple[PreparedImage, int]:
    target = image.target
    resolved = overlaps.resolve(image.masks, categories, (target.height, target.width))
    pre_ids = reader.read_id_map(dst, target)
    pre = {s.segment_id: PreLabel(s.category_name, s.score) for s in target.segments}
    outcomes = match_segments(pre_ids, pre, resolved.id_map,
                              {k: c.name for k, c in resolved.categories.items()})
    stats = coco.segment_stats(resolved.id_map)
    info = [{"id": k, "category_id": c.id, "area": stats[k][0], "bbox": stats[k][1],
             "iscrowd": 0} for k, c in resolved.categories.items()]
    png = coco.id_map_to_png(resolved.id_map.astype(np.uint32))
    return PreparedImage(image, png, info, outcomes), resolved.reassigned_pixels
