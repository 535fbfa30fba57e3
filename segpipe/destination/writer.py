"""The shard writer: every file of a shard at deterministic keys, then the commit marker.

A retried shard rewrites the same bytes at the same keys, so a crash between any
two writes is harmless; readers trust only shards whose commit marker exists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segpipe.core.items import CommitMarker, ImageFailure, Prediction, RunContext, Shard
from segpipe.destination import layout
from segpipe.formats import coco, tables
from segpipe.io.storage import Folder, ParallelWrites, redact, redact_uri
from segpipe.labels import LabelSet


@dataclass(frozen=True)
class EncodedPrediction:
    """One image's prediction with its pixel-sized outputs encoded (see `ShardWriter.encode`)."""

    pred: Prediction
    png: bytes
    semantic_png: bytes | None
    stats: dict[int, tuple[int, list[int]]]
    rles: dict[int, dict[str, Any]]


@dataclass
class ShardWriter:
    dst: Folder
    run: RunContext
    shard: Shard
    label_set: LabelSet
    writes: ParallelWrites  # per-image PNGs, a few at a time
    attempt: int = 1
    _coco_images: list[dict[str, Any]] = field(default_factory=list)
    _coco_annotations: list[dict[str, Any]] = field(default_factory=list)
    _rows: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {"segments": [], "images": [], "errors": []})

    def encode(self, pred: Prediction) -> EncodedPrediction:
        """The pixel-sized work for one image: its PNGs, segment stats and RLE. Depends on
        nothing but `pred`, so several threads may encode while `add_encoded` keeps order."""
        runs = coco.id_runs(pred.id_map)  # one pass over the pixels serves stats and RLE
        stats = coco.segment_stats(pred.id_map, runs)
        kept = [seg.segment_id for seg in pred.segments if seg.segment_id in stats]
        semantic = coco.label_png(*self._semantic_map(pred)) if self.run.task == "semantic" else None
        return EncodedPrediction(pred, coco.id_map_to_png(pred.id_map), semantic, stats,
                                 coco.encode_rles(pred.id_map, kept, runs))

    def add_prediction(self, pred: Prediction) -> None:
        """Encode and write one image's PNGs now; keep only its small rows for the shard files."""
        self.add_encoded(self.encode(pred))

    def add_encoded(self, encoded: EncodedPrediction) -> None:
        """Write an encoded image's PNGs; keep its small rows for the shard files. Rows keep
        the order of the calls, so call it in plan order."""
        pred, stats = encoded.pred, encoded.stats
        ref = pred.image.ref
        uri = redact_uri(ref.uri)
        height, width = pred.id_map.shape
        png_key = layout.panoptic_png(self.run.run_id, ref.image_id)
        self.writes.put(png_key, encoded.png)
        semantic_key = None
        if encoded.semantic_png is not None:
            semantic_key = layout.semantic_png(self.run.run_id, ref.image_id)
            self.writes.put(semantic_key, encoded.semantic_png)
        segments_info = []
        for seg in pred.segments:
            if seg.segment_id not in stats:  # transformers can report a segment with no pixels left
                continue
            area, bbox = stats[seg.segment_id]
            cat = self.label_set.category(seg.label_id)
            score = None if seg.score is None else round(float(seg.score), 6)
            segments_info.append({"id": seg.segment_id, "category_id": cat.id, "area": area,
                                  "bbox": bbox, "iscrowd": 0, "score": score})
            self._rows["segments"].append({
                "run_id": self.run.run_id, "shard_id": self.shard.shard_id,
                "image_id": ref.image_id, "image_uri": uri, "segment_id": seg.segment_id,
                "category_id": cat.id, "category_name": cat.name, "is_thing": cat.isthing,
                "score": score, "area": area, "bbox": bbox,
                "rle": encoded.rles[seg.segment_id],
                "image_height": height, "image_width": width, "model": self.run.model,
                "model_revision": self.run.revision, "task": self.run.task,
                "created_at": self.run.created_at, "review_status": "pending",
            })
        self._coco_images.append({"id": ref.image_id, "file_name": uri, "width": width,
                                  "height": height})
        self._coco_annotations.append({"image_id": ref.image_id,
                                       "file_name": png_key.split("/", 1)[1],
                                       "segments_info": segments_info})
        row = self._image_row(ref, width, height, pred.image.content_hash, len(segments_info),
                              "ok", None, png_key, semantic_key)
        if pred.review_priority is not None:
            row["review_priority"] = round(float(pred.review_priority), 6)
        self._rows["images"].append(row)

    def add_failure(self, failure: ImageFailure) -> None:
        ref = failure.ref
        message = redact(failure.message)
        self._rows["errors"].append({
            "run_id": self.run.run_id, "shard_id": self.shard.shard_id, "image_id": ref.image_id,
            "image_uri": redact_uri(ref.uri), "member": ref.member, "stage": failure.stage,
            "error_type": failure.error_type, "message": message, "attempt": self.attempt,
            "created_at": self.run.created_at,
        })
        self._rows["images"].append(self._image_row(ref, None, None, None, 0, "error", message,
                                                    None, None))

    def commit(self) -> CommitMarker:
        """Write the shard's tables and COCO fragment, then the commit marker, last."""
        run_id, sid = self.run.run_id, self.shard.shard_id
        self.writes.wait()  # every image's PNG lands before anything names it
        for name, rows in self._rows.items():
            self.dst.write_bytes(layout.table_file(name, run_id, sid), tables.to_parquet_bytes(name, rows))
        self.dst.write_json(layout.fragment(run_id, sid), {
            "images": self._coco_images, "annotations": self._coco_annotations,
            "categories": [c.to_coco() for c in self.label_set.categories],
        })
        marker = CommitMarker(sid, run_id, images=len(self.shard.images),
                              annotated=len(self._coco_images), errors=len(self._rows["errors"]),
                              segments=len(self._rows["segments"]))
        self.dst.write_json(layout.commit(run_id, sid), marker.to_json())
        return marker

    def _semantic_map(self, pred: Prediction) -> tuple[np.ndarray, int]:
        """Category id per pixel, and the number of ids; void is the largest value of the
        PNG's bit depth."""
        num = max((c.id for c in self.label_set.categories), default=0) + 1
        void = 255 if num <= 255 else 65535
        lut = np.full(int(pred.id_map.max()) + 1, void, dtype=np.int64)
        for seg in pred.segments:
            lut[seg.segment_id] = self.label_set.category(seg.label_id).id
        return lut[pred.id_map], num

    def _image_row(self, ref: Any, width: int | None, height: int | None, digest: str | None,
                   num_segments: int, status: str, error: str | None, png_key: str | None,
                   semantic_key: str | None) -> dict[str, Any]:
        return {
            "run_id": self.run.run_id, "shard_id": self.shard.shard_id, "image_id": ref.image_id,
            "image_uri": redact_uri(ref.uri), "member": ref.member, "source_version": ref.version,
            "width": width, "height": height, "content_hash": digest,
            "num_segments": num_segments, "status": status, "error": error,
            "panoptic_png": png_key, "semantic_png": semantic_key,
            "source_fields": json.dumps(ref.fields, sort_keys=True) if ref.fields else None,
            "created_at": self.run.created_at, "review_priority": None,
        }
