"""Synthetic scenes with COCO-panoptic ground truth, for the demo model and for tests.

A scene is a few horizontal bands of textured stuff (sky, ground, water) with a handful
of flat-colored shapes on top that overlap and occlude each other. Everything is drawn
from a generator seeded by (seed, index), so scene i of a seed is the same bytes
whatever `count` is, and another seed gives other scenes.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from segpipe.formats import coco
from segpipe.io.storage import Folder

CATEGORIES: list[dict[str, Any]] = [
    {"id": 1, "name": "circle", "isthing": 1, "color": [220, 20, 60]},
    {"id": 2, "name": "square", "isthing": 1, "color": [0, 130, 200]},
    {"id": 3, "name": "triangle", "isthing": 1, "color": [255, 200, 0]},
    {"id": 4, "name": "star", "isthing": 1, "color": [145, 30, 180]},
    {"id": 5, "name": "ellipse", "isthing": 1, "color": [60, 180, 75]},
    {"id": 6, "name": "sky", "isthing": 0, "color": [135, 206, 235]},
    {"id": 7, "name": "ground", "isthing": 0, "color": [139, 90, 43]},
    {"id": 8, "name": "water", "isthing": 0, "color": [0, 105, 148]},
]

_ID = {c["name"]: c["id"] for c in CATEGORIES}
THING_NAMES = tuple(c["name"] for c in CATEGORIES if c["isthing"])

# Band orders, top to bottom. Sky is always on top when present, as a horizon would be.
_LAYOUTS = (
    ("sky", "ground"),
    ("sky", "water"),
    ("sky", "water", "ground"),
    ("sky", "ground", "water"),
    ("ground", "water"),
    ("water", "ground"),
    ("ground",),
    ("water",),
)

# Each shape class has its own hue family, away from the blues and browns of the stuff,
# so color and shape agree: hard enough to need a real model, learnable in minutes.
_HUES = {"circle": 0.02, "square": 0.15, "triangle": 0.32, "star": 0.76, "ellipse": 0.89}
HUE_JITTER = 0.03

MIN_SIDE, MAX_SIDE = 96, 192
# Models see scenes squashed to a square; a moderate aspect ratio keeps a circle a circle.
MAX_ASPECT = 1.33
MIN_THINGS, MAX_THINGS = 2, 5
RADIUS = (0.15, 0.3)  # a shape's size, as a share of the image's shorter side
# A shape may hide at most this share of an earlier shape, and nothing may end up
# smaller than MIN_VISIBLE pixels: heavier occlusion would make labels guesswork.
# Shapes of different classes may overlap; shapes of one class keep apart.
MAX_OCCLUDED = 0.4
MIN_VISIBLE = 60
SAME_CLASS_GAP = 2  # pixels between two shapes of one class


@dataclass(frozen=True)
class Scene:
    """One rendered scene: the image, its segment id map (0 = void) and segments_info."""

    image: np.ndarray  # (H, W, 3) uint8
    ids: np.ndarray  # (H, W) int32, segment ids 1..N
    segments: list[dict[str, Any]]


def make_scene(seed: int, index: int) -> Scene:
    """Render scene `index` of `seed`."""
    rng = np.random.default_rng([seed, index])
    width, height = _image_size(rng)
    bands = _band_map(rng, _LAYOUTS[rng.integers(len(_LAYOUTS))], height, width)
    image = _stuff_texture(rng, bands, height, width)
    labels = [name for name, _ in bands]
    id_map = np.zeros((height, width), np.int32)
    for k, (_, mask) in enumerate(bands):
        id_map[mask] = k + 1
    for name, mask, color in _place_things(rng, id_map, height, width):
        id_map[mask] = len(labels) + 1
        labels.append(name)
        image[mask] = _shade(rng, color, mask)
    noise = rng.normal(0.0, 3.0, image.shape)
    image = np.clip(image + noise, 0, 255).astype(np.uint8)
    return _finish(image, id_map, labels)


def _image_size(rng: np.random.Generator) -> tuple[int, int]:
    width = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
    aspect = np.exp(rng.uniform(-np.log(MAX_ASPECT), np.log(MAX_ASPECT)))
    return width, int(np.clip(round(width * aspect), MIN_SIDE, MAX_SIDE))


def _band_map(rng: np.random.Generator, layout: tuple[str, ...], height: int, width: int):
    """Stuff bands as (name, mask) pairs, split by wavy horizon lines."""
    cuts = np.sort(rng.uniform(0.2, 0.8, size=len(layout) - 1))
    if len(cuts) == 2 and cuts[1] - cuts[0] < 0.2:
        cuts[1] = min(cuts[0] + 0.2, 0.9)
    xs = np.arange(width)
    ys = np.arange(height)[:, None]
    band = np.zeros((height, width), np.int32)
    for cut in cuts:
        amplitude = rng.uniform(0.0, 0.06) * height
        wave = amplitude * np.sin(xs * rng.uniform(0.02, 0.12) + rng.uniform(0, 2 * np.pi))
        tilt = rng.uniform(-0.15, 0.15) * (xs - width / 2)
        band += ys >= (cut * height + wave + tilt)[None, :]
    return [(name, band == k) for k, name in enumerate(layout)]


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a small random grid resized up bicubically."""
    grid = rng.uniform(0, 255, size=(cells, cells)).astype(np.uint8)
    big = Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(big, np.float32) / 127.5 - 1.0


def _stuff_texture(rng, bands, height: int, width: int) -> np.ndarray:
    """Each band painted with its class's texture; colors jitter from scene to scene."""
    image = np.zeros((height, width, 3), np.float32)
    ys = np.linspace(0.0, 1.0, height)[:, None, None]
    xs = np.arange(width)[None, :, None]
    for name, mask in bands:
        jitter = rng.uniform(-20, 20, size=3)
        if name == "sky":
            top, bottom = np.array([70, 130, 210]) + jitter, np.array([170, 210, 245]) + jitter
            clouds = np.clip(_smooth_noise(rng, height, width, 4), 0, 1)[..., None]
            texture = top + (bottom - top) * ys + clouds * 60
        elif name == "ground":
            base = np.array([120, 95, 55]) + jitter
            grain = rng.normal(0, 18, size=(height, width, 1))
            patches = _smooth_noise(rng, height, width, 6)[..., None] * 25
            texture = base + grain + patches * np.array([0.6, 1.0, 0.3])
        else:
            base = np.array([25, 90, 140]) + jitter
            phase = xs * rng.uniform(0.05, 0.15) + rng.uniform(0, 2 * np.pi)
            waves = np.sin(ys * height * rng.uniform(0.5, 0.9) + 2 * np.sin(phase))
            texture = base + waves * 22 + ys * 30
        image[mask] = np.broadcast_to(texture, (height, width, 3))[mask]
    return image


def _place_things(rng, id_map: np.ndarray, height: int, width: int):
    """Shapes that keep every earlier shape mostly visible; yields (name, mask, color)."""
    base_count = int(id_map.max())
    visible = id_map.copy()
    names: dict[int, str] = {}
    wanted = int(rng.integers(MIN_THINGS, MAX_THINGS + 1))
    for _ in range(wanted * 8):
        if len(names) == wanted:
            break
        name = THING_NAMES[rng.integers(len(THING_NAMES))]
        mask = _shape_mask(rng, name, height, width)
        if (mask.sum() < MIN_VISIBLE * 2 or not _keeps_others(visible, mask, base_count)
                or _touches_same_class(visible, mask, name, names)):
            continue
        segment = base_count + len(names) + 1
        names[segment] = name
        visible[mask] = segment
        yield name, mask, _thing_color(rng, name)


def _thing_color(rng, name: str) -> np.ndarray:
    hue = (_HUES[name] + rng.uniform(-HUE_JITTER, HUE_JITTER)) % 1.0
    return _hsv_to_rgb(hue, rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))


def _keeps_others(visible: np.ndarray, mask: np.ndarray, base_count: int) -> bool:
    """True when drawing `mask` on top leaves each earlier shape mostly visible."""
    ids, before = np.unique(visible[visible > base_count], return_counts=True)
    for seg, area in zip(ids, before, strict=True):
        hidden = int(np.count_nonzero(mask & (visible == seg)))
        if hidden > MAX_OCCLUDED * area or area - hidden < MIN_VISIBLE:
            return False
    return True


def _touches_same_class(visible: np.ndarray, mask: np.ndarray, name: str, names: dict) -> bool:
    """True when `mask` would touch a shape of its own class. Two such shapes share a hue
    family, so where they meet even a person could hardly tell one from the other."""
    if name not in names.values():
        return False
    near = np.unique(visible[_dilate(mask, SAME_CLASS_GAP)])
    return any(names.get(int(segment)) == name for segment in near)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(image.filter(ImageFilter.MaxFilter(2 * radius + 1))) > 0


def _shape_mask(rng, name: str, height: int, width: int) -> np.ndarray:
    """A filled shape, mostly inside the image, drawn with PIL."""
    radius = rng.uniform(*RADIUS) * min(height, width)
    cx = rng.uniform(0.4 * radius, width - 0.4 * radius)
    cy = rng.uniform(0.4 * radius, height - 0.4 * radius)
    angle = rng.uniform(0, 2 * np.pi)
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    if name == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=1)
    else:
        draw.polygon(_outline(rng, name, cx, cy, radius, angle), fill=1)
    return np.asarray(canvas, bool)


def _outline(rng, name: str, cx: float, cy: float, radius: float, angle: float):
    """Polygon vertices of a non-circle shape centered at (cx, cy)."""
    t: np.ndarray  # vertex angles
    r: np.ndarray  # vertex radii
    if name == "square":
        t = angle + np.arange(4) * np.pi / 2
        r = np.full(4, radius * 0.9)
    elif name == "triangle":
        t = angle + np.arange(3) * 2 * np.pi / 3
        r = np.full(3, radius * 1.1)
    elif name == "star":
        t = angle + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, radius * 1.1, radius * 0.45)
    else:  # ellipse: clearly elongated, so it is never a circle in disguise
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        r_minor = radius * rng.uniform(0.4, 0.6)
        x, y = radius * 1.1 * np.cos(t), r_minor * np.sin(t)
        c, s = np.cos(angle), np.sin(angle)
        return [(cx + c * a - s * b, cy + s * a + c * b) for a, b in zip(x, y, strict=True)]
    return [(cx + rr * np.cos(tt), cy + rr * np.sin(tt)) for rr, tt in zip(r, t, strict=True)]


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, np.float32) * 255


def _shade(rng, color: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The shape's color with a gentle linear light gradient across it."""
    ys, xs = np.nonzero(mask)
    direction = rng.normal(size=2)
    ramp = ys * direction[0] + xs * direction[1]
    ramp = (ramp - ramp.mean()) / (np.abs(ramp - ramp.mean()).max() + 1e-6)
    return np.clip(color[None, :] * (1.0 + 0.15 * ramp[:, None]), 0, 255)


def _finish(image: np.ndarray, id_map: np.ndarray, labels: list[str]) -> Scene:
    """Renumber the visible segments 1..N and describe them as segments_info."""
    out = np.zeros_like(id_map)
    segments: list[dict[str, Any]] = []
    for old, name in enumerate(labels, start=1):
        mask = id_map == old
        if not mask.any():
            continue
        new = len(segments) + 1
        out[mask] = new
        segments.append(
            {"id": new, "category_id": _ID[name], "area": int(mask.sum()),
             "bbox": _bbox(mask), "iscrowd": 0}
        )
    return Scene(image, out, segments)


def _bbox(mask: np.ndarray) -> list[int]:
    """COCO [x, y, width, height] of the mask's pixels."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    return [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)]


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def scene_name(seed: int, index: int) -> str:
    return f"scene-{seed}-{index:06d}.png"


def write_scenes(
    out_url: str, count: int, seed: int, storage_options: dict | None = None
) -> None:
    """Write `count` scenes of `seed` to OUT/images/, OUT/panoptic/ and OUT/panoptic.json."""
    out = Folder(out_url, storage_options or {})
    images, annotations = [], []
    for index in range(count):
        scene = make_scene(seed, index)
        name = scene_name(seed, index)
        height, width = scene.ids.shape
        out.write_bytes(f"images/{name}", png_bytes(scene.image))
        out.write_bytes(f"panoptic/{name}", coco.id_map_to_png(scene.ids))
        images.append({"id": index, "file_name": name, "width": width, "height": height})
        annotations.append({"image_id": index, "file_name": name,
                            "segments_info": scene.segments})
    document = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    out.write_bytes("panoptic.json", json.dumps(document).encode())
