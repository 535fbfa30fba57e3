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
from segpipe.io.storage import Folder
from segpipe.labels import Category
from segpipe.tools.source_images import read_source_pixels

log = logging.getLogger(__name__)

PREVIEW = "preview"
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
    legend = [{"name": c.name, "color": _hex(c.color), "thing": c.isthing}
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


def _hex(color: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*color)


def gallery_html(data: dict[str, Any]) -> str:
    # "<" escaped so that no value can close the <script> element holding the data.
    payload = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
    return (_PAGE.replace("__TITLE__", html.escape(f"segpipe preview: {data['dst']}"))
            .replace("__DATA__", payload))


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
  body { font: 14px system-ui, sans-serif; margin: 0; background: #16181d; color: #e6e6e6; }
  header { padding: 12px 16px; background: #21242b; position: sticky; top: 0; z-index: 1; }
  header h1 { font-size: 16px; margin: 0 0 8px; font-weight: 600; }
  .controls { display: flex; flex-wrap: wrap; gap: 12px; align-items: center; }
  .controls label { display: flex; gap: 6px; align-items: center; }
  select, input, button { font: inherit; background: #2c3038; color: inherit;
    border: 1px solid #444a55; border-radius: 4px; padding: 3px 6px; }
  button:disabled { opacity: 0.4; }
  #legend { display: flex; flex-wrap: wrap; gap: 6px; margin-top: 8px; }
  .chip { display: inline-flex; gap: 4px; align-items: center; font-size: 12px; }
  .swatch { width: 12px; height: 12px; border-radius: 2px; display: inline-block; }
  #grid { display: grid; gap: 12px; padding: 16px;
    grid-template-columns: repeat(auto-fill, minmax(280px, 1fr)); }
  figure { margin: 0; background: #21242b; border-radius: 6px; overflow: hidden; }
  figure img { width: 100%; height: 240px; object-fit: contain; display: block;
    background: #000; }
  figcaption { padding: 6px 8px; font-size: 12px; line-height: 1.4; }
  .name { overflow-wrap: anywhere; font-weight: 600; }
  .low { color: #ff8a7a; font-weight: 600; }
  .empty { padding: 32px; text-align: center; color: #999; }
</style>
</head>
<body>
<header>
  <h1 id="title"></h1>
  <div class="controls">
    <label>category <select id="category"><option value="">all</option></select></label>
    <label><input type="checkbox" id="low-only"> only scores below
      <input type="number" id="threshold" min="0" max="1" step="0.05" value="0.5"></label>
    <label>order <select id="order"><option value="source">as annotated</option>
      <option value="score">lowest score first</option></select></label>
    <label>per page <select id="per"><option>12</option><option selected>24</option>
      <option>48</option><option>96</option></select></label>
    <button id="prev">&larr; prev</button><span id="page"></span><button id="next">next &rarr;</button>
    <span id="count"></span>
  </div>
  <div id="legend"></div>
</header>
<main id="grid"></main>
<script id="gallery-data" type="application/json">__DATA__</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("gallery-data").textContent);
const $ = (id) => document.getElementById(id);
let page = 0;

// The view lives in the URL's fragment (#category=car&below=0.5&order=score&per=24&page=2),
// so a filtered page can be bookmarked or sent to someone else.
function readHash() {
  const q = new URLSearchParams(location.hash.slice(1));
  $("category").value = q.get("category") || "";
  $("low-only").checked = q.has("below");
  if (q.has("below")) $("threshold").value = q.get("below");
  $("order").value = q.get("order") || "source";
  $("per").value = q.get("per") || "24";
  page = Math.max(0, (parseInt(q.get("page"), 10) || 1) - 1);
}

function writeHash() {
  const q = new URLSearchParams();
  if ($("category").value) q.set("category", $("category").value);
  if ($("low-only").checked) q.set("below", $("threshold").value);
  if ($("order").value !== "source") q.set("order", $("order").value);
  if ($("per").value !== "24") q.set("per", $("per").value);
  if (page > 0) q.set("page", String(page + 1));
  history.replaceState(null, "", q.toString() ? "#" + q.toString() : location.pathname);
}

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function filtered() {
  const cat = $("category").value;
  const low = $("low-only").checked;
  const threshold = parseFloat($("threshold").value);
  let items = DATA.items.filter((it) =>
    (!cat || it.segments.some((s) => s.c === cat)) &&
    (!low || it.segments.some((s) => s.s !== null && s.s < threshold &&
                                     (!cat || s.c === cat))));
  if ($("order").value === "score") {
    const key = (it) => (it.minScore === null ? 2 : it.minScore);
    items = items.slice().sort((a, b) => key(a) - key(b));
  }
  return items;
}

const pct = (s) => Math.round(s * 100) + "%";

// One line per category: how many segments, and the lowest score among them.
function summary(segments) {
  const byCat = new Map();
  for (const s of segments) {
    const entry = byCat.get(s.c) || {n: 0, min: null};
    entry.n += 1;
    if (s.s !== null && (entry.min === null || s.s < entry.min)) entry.min = s.s;
    byCat.set(s.c, entry);
  }
  return [...byCat].map(([c, e]) => c + (e.n > 1 ? " \u00d7" + e.n : "") +
                                   (e.min === null ? "" : " " + pct(e.min)));
}

function card(it) {
  const fig = el("figure", {"class": "card", "data-id": it.id});
  const link = el("a", {href: it.src, target: "_blank"});
  const img = el("img", {src: it.src, alt: it.name, loading: "lazy"});
  img.addEventListener("load", () => fig.setAttribute("data-loaded", "true"));
  img.addEventListener("error", () => {
    fig.setAttribute("data-loaded", "false");
    cap.appendChild(el("div", {"class": "low"}, "overlay missing: " + it.src));
  });
  link.appendChild(img);
  fig.appendChild(link);
  const cap = el("figcaption");
  cap.appendChild(el("div", {"class": "name", title: it.uri},
                     it.name + "  (" + it.w + "\u00d7" + it.h + ")"));
  const threshold = parseFloat($("threshold").value);
  const n = it.segments.length;
  const line = el("div", {}, n + (n === 1 ? " segment: " : " segments: ") +
                             (summary(it.segments).join(", ") || "none"));
  if (it.minScore !== null && it.minScore < threshold) line.className = "low";
  cap.appendChild(line);
  if (!it.source) cap.appendChild(el("div", {"class": "low"}, "source image not readable"));
  fig.appendChild(cap);
  return fig;
}

function render() {
  const items = filtered();
  const per = parseInt($("per").value, 10);
  const pages = Math.max(1, Math.ceil(items.length / per));
  page = Math.min(page, pages - 1);
  const grid = $("grid");
  grid.replaceChildren();
  for (const it of items.slice(page * per, (page + 1) * per)) grid.appendChild(card(it));
  if (!items.length) grid.appendChild(el("div", {"class": "empty"}, "no images match"));
  $("page").textContent = " page " + (page + 1) + " of " + pages + " ";
  $("count").textContent = items.length + " of " + DATA.items.length + " images";
  $("prev").disabled = page === 0;
  $("next").disabled = page >= pages - 1;
  writeHash();
}

function setup() {
  $("title").textContent = "segpipe preview: " + DATA.dst;
  for (const c of DATA.categories) {
    $("category").appendChild(el("option", {value: c.name}, c.name));
    const chip = el("span", {"class": "chip"});
    chip.appendChild(el("span", {"class": "swatch", style: "background:" + c.color}));
    chip.appendChild(document.createTextNode(c.name));
    $("legend").appendChild(chip);
  }
  readHash();
  for (const id of ["category", "low-only", "threshold", "order", "per"]) {
    $(id).addEventListener("input", () => { page = 0; render(); });
  }
  $("prev").addEventListener("click", () => { page -= 1; render(); });
  $("next").addEventListener("click", () => { page += 1; render(); });
  window.addEventListener("hashchange", () => { readHash(); render(); });
  render();
}
setup();
</script>
</body>
</html>
"""
