"""Overlay previews of a destination's committed pre-labels, and a static HTML gallery.

Each overlay is the source image with every segment filled in its category's color
(things jittered per instance so neighbours differ), outlined, and labeled with the
category name and score, in the manner of detectron2's panoptic visualizer. The gallery
(`index.html`) embeds its data as JSON and pages and filters it in the browser; its links
are relative, so the folder works opened locally or served from an object-store prefix.

    OUT/index.html
    OUT/images/<image_id>.jpg      (OUT defaults to DST/preview)
"""

from __future__ import annotations

import html
import io
import itertools
import json
import logging
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from segpipe.core.concurrency import ordered_map
from segpipe.destination.reader import (
    AnnotatedImage,
    categories,
    iter_images,
    open_destination,
    read_id_map,
    require_committed,
)
from segpipe.formats.colors import hex_color
from segpipe.io.storage import Folder
from segpipe.labels import Category
from segpipe.tools.source_images import read_source_pixels

log = logging.getLogger(__name__)

PREVIEW = "preview"
GALLERY_TEMPLATE = "preview_gallery.html"  # beside this module, shipped as package data
MASK_ALPHA = 0.5
DISPLAY_LONG_SIDE = (480, 1024)  # small images are enlarged so labels stay legible
VOID_GRAY = 96


@dataclass(frozen=True)
class Overlay:
    image: Image.Image
    source_found: bool


def write_preview(dst: str, *, out: str | None = None, limit: int = 200,
                  storage_options: dict[str, Any] | None = None, threads: int = 4) -> str:
    """Write overlays of the first `limit` committed images and the gallery; returns the
    gallery's URL."""
    folder = open_destination(dst, storage_options)
    target = Folder(out, folder.storage_options) if out else folder.sub(PREVIEW)
    shards = require_committed(folder)
    cats = {c.id: c for c in categories(folder, shards)}
    chosen = _first(iter_images(folder, shards=shards, rle=False), limit)

    def render(image: AnnotatedImage) -> dict[str, Any]:
        overlay = render_overlay(folder, image, cats, storage_options=storage_options)
        key = f"images/{image.image_id:016x}.jpg"
        buf = io.BytesIO()
        overlay.image.save(buf, format="JPEG", quality=90)
        target.write_bytes(key, buf.getvalue())
        return _gallery_item(image, key, overlay)

    items = [item for _, item in ordered_map(render, chosen, threads=threads)]
    used = {s["c"] for item in items for s in item["segments"]}
    legend = [{"name": c.name, "color": hex_color(c.color), "thing": c.isthing}
              for c in cats.values() if c.name in used]
    page = gallery_html({"dst": folder.url, "items": items, "categories": legend})
    target.write_bytes("index.html", page.encode("utf-8"))
    return target.url_of("index.html")


def render_overlay(dst: Folder, image: AnnotatedImage, cats: dict[int, Category], *,
                   storage_options: dict[str, Any] | None = None) -> Overlay:
    id_map = read_id_map(dst, image)
    try:
        pixels = read_source_pixels(dst, image, storage_options=storage_options)
        found = pixels.shape[:2] == id_map.shape
    except Exception as exc:  # noqa: BLE001 - a missing source still gets a mask-only preview
        log.warning("preview of %s without its source image: %s", image.image_uri, exc)
        found = False
    if not found:
        pixels = np.full((*id_map.shape, 3), VOID_GRAY, dtype=np.uint8)
    return Overlay(draw_segments(pixels, id_map, image, cats), found)


def draw_segments(pixels: np.ndarray, id_map: np.ndarray, image: AnnotatedImage,
                  cats: dict[int, Category]) -> Image.Image:
    """Filled, outlined and labeled segments over `pixels` (H, W, 3), at display size."""
    height, width = id_map.shape
    scale = _display_scale(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # Enlarged by whole factors pixel for pixel, so a reviewer sees the mask's real edges.
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
    base = Image.fromarray(pixels).resize(size, resample)
    ids = np.asarray(Image.fromarray(id_map.astype(np.int32)).resize(size, Image.Resampling.NEAREST))

    colors = np.zeros((int(ids.max()) + 1, 3), dtype=np.float64)
    painted = np.zeros(colors.shape[0], dtype=bool)
    for seg in image.segments:
        if seg.segment_id < colors.shape[0]:
            colors[seg.segment_id] = _segment_color(cats, seg.category_id, seg.segment_id,
                                                    seg.is_thing)
            painted[seg.segment_id] = True
    mask = painted[ids]
    rgb = np.asarray(base, dtype=np.float64)
    rgb[mask] = (1 - MASK_ALPHA) * rgb[mask] + MASK_ALPHA * colors[ids[mask]]
    edges = _edges(ids)
    rgb[edges] = 0.3 * colors[ids[edges]]  # the segment's color darkened, as detectron2 does
    canvas = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    _draw_labels(canvas, ids, image, colors)
    return canvas


def _display_scale(width: int, height: int) -> float:
    low, high = DISPLAY_LONG_SIDE
    long_side = max(width, height)
    if long_side < low:
        return float(np.ceil(low / long_side))  # whole factors keep mask pixels square
    return min(1.0, high / long_side)


def _segment_color(cats: dict[int, Category], category_id: int, segment_id: int,
                   is_thing: bool) -> np.ndarray:
    cat = cats.get(category_id)
    color = np.array(cat.color if cat else (200, 200, 200), dtype=np.float64)
    if is_thing:  # instances of one category get nearby, distinguishable shades
        vec = np.random.default_rng(segment_id).random(3) - 0.5
        color = np.clip(color + vec / max(float(np.linalg.norm(vec)), 1e-6) * 64, 0, 255)
    return color


def _edges(ids: np.ndarray) -> np.ndarray:
    """Pixels whose right or lower neighbour is another segment, two pixels wide."""
    edge = np.zeros(ids.shape, dtype=bool)
    edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    edge[:-1, :] |= ids[:-1, :] != ids[1:, :]
    thick = edge.copy()
    thick[:, 1:] |= edge[:, :-1]
    thick[1:, :] |= edge[:-1, :]
    return thick


def _draw_labels(canvas: Image.Image, ids: np.ndarray, image: AnnotatedImage,
                 colors: np.ndarray) -> None:
    draw = ImageDraw.Draw(canvas, "RGBA")
    font_size = max(11, round(max(canvas.size) / 48))
    font = ImageFont.load_default(size=font_size)
    placed: list[tuple[int, int, int, int]] = []
    for seg in image.segments:
        ys, xs = np.nonzero(ids == seg.segment_id)
        if ys.size == 0:
            continue
        # The mask pixel nearest the centroid: inside the segment even when it is not convex.
        nearest = np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2)
        text = seg.category_name if seg.score is None else f"{seg.category_name} {seg.score:.0%}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        w, h = int(right - left), int(bottom - top)
        x = int(np.clip(xs[nearest] - w / 2, 0, max(0, canvas.width - w)))
        y = _free_row(int(ys[nearest] - h / 2), x, w, h, placed, canvas.height)
        placed.append((x, y, w, h))
        draw.rectangle((x - 2, y - 2, x + w + 2, y + h + 2), fill=(0, 0, 0, 170))
        light = tuple(int(v) for v in 255 - 0.3 * (255 - colors[seg.segment_id]))
        draw.text((x - left, y - top), text, font=font, fill=(*light, 255))


def _free_row(y: int, x: int, w: int, h: int, placed: list[tuple[int, int, int, int]],
              height: int) -> int:
    """A y near `y` where the label box overlaps no label drawn before (small segments
    side by side would otherwise stack their labels unreadably)."""
    candidates = [y + k * (h + 5) for k in (0, 1, -1, 2, -2, 3, -3)]
    clipped = [int(np.clip(c, 0, max(0, height - h))) for c in candidates]
    for c in clipped:
        if all(c + h + 2 < py - 2 or c - 2 > py + ph + 2 or x + w + 2 < px - 2 or x - 2 > px + pw + 2
               for px, py, pw, ph in placed):
            return c
    return clipped[0]


def _gallery_item(image: AnnotatedImage, key: str, overlay: Overlay) -> dict[str, Any]:
    scores = [s.score for s in image.segments if s.score is not None]
    name = image.member or image.image_uri
    return {
        "id": f"{image.image_id:016x}", "src": key, "uri": image.image_uri,
        "name": posixpath.basename(name.split("?", 1)[0]) or name, "member": image.member,
        "w": image.width, "h": image.height, "source": overlay.source_found,
        "minScore": min(scores) if scores else None,
        "segments": [{"c": s.category_name, "s": s.score} for s in image.segments],
    }


def _first(images: Iterable[AnnotatedImage], limit: int) -> list[AnnotatedImage]:
    return list(itertools.islice(images, max(0, limit)))


def gallery_html(data: dict[str, Any]) -> str:
    """The gallery page with `data` embedded; the page itself is package data."""
    # "<" escaped so that no value can close the <script> element holding the data.
    payload = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
    page = resources.files(__package__).joinpath(GALLERY_TEMPLATE).read_text(encoding="utf-8")
    return (page.replace("__TITLE__", html.escape(f"segpipe preview: {data['dst']}"))
            .replace("__DATA__", payload))

