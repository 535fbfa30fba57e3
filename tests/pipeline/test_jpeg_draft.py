"""--jpeg-draft: JPEGs decode at a reduced scale that still fits the model's input, and the
outputs stay at the image's own size, close to a full decode's."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from segpipe.core.config import JobConfig
from segpipe.core.items import ImageRef
from segpipe.demo.synth import make_scene
from segpipe.destination.runs import setting_differences
from segpipe.model.segmenter import Segmenter
from segpipe.pipeline.decode import decode_image
from tests.support.shards import run_shard

REF = ImageRef(1, "mem://a.jpg")


def _jpeg(width: int, height: int, *, orientation: int | None = None, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    Image.fromarray(pixels).save(buf, format="JPEG", exif=exif.tobytes())
    return buf.getvalue()


def test_a_jpeg_decodes_at_the_smallest_scale_whose_sides_fit():
    data = _jpeg(640, 480)
    full = decode_image(REF, data, max_pixels=10**8)
    half = decode_image(REF, data, max_pixels=10**8, draft_to=128)
    eighth = decode_image(REF, _jpeg(1920, 1080), max_pixels=10**8, draft_to=128)
    assert full.pixels.shape == (480, 640, 3) and full.size == (480, 640)
    assert half.pixels.shape == (240, 320, 3) and half.size == (480, 640)  # 1/4 would be 120 high
    assert eighth.pixels.shape == (135, 240, 3) and eighth.size == (1080, 1920)
    assert half.pixels.flags.writeable and half.content_hash == full.content_hash
    # Too small to shrink: decoded in full, with no stored size of its own.
    whole = decode_image(REF, data, max_pixels=10**8, draft_to=300)
    assert whole.stored_size is None and np.array_equal(whole.pixels, full.pixels)


def test_a_draft_keeps_the_viewed_size_of_an_exif_rotated_jpeg():
    """Stored 640 wide and 480 high, viewed a quarter turned: 480 wide and 640 high."""
    image = decode_image(REF, _jpeg(640, 480, orientation=6), max_pixels=10**8, draft_to=128)
    assert image.size == (640, 480) and image.pixels.shape == (320, 240, 3)


def test_other_formats_decode_in_full():
    buf = io.BytesIO()
    Image.fromarray(np.zeros((480, 640, 3), np.uint8)).save(buf, format="PNG")
    image = decode_image(REF, buf.getvalue(), max_pixels=10**8, draft_to=128)
    assert image.stored_size is None and image.pixels.shape == (480, 640, 3)


def test_the_pixel_limit_holds_on_the_full_size_before_any_draft():
    failure = decode_image(REF, _jpeg(640, 480), max_pixels=640 * 480 - 1, draft_to=128)
    assert failure.stage == "decode" and "over the limit" in failure.message


def _scenes(folder: Path, count: int) -> None:
    """The demo model's kind of scene, enlarged to 640x480, as JPEGs."""
    folder.mkdir(parents=True)
    for i in range(count):
        scene = Image.fromarray(make_scene(11, i).image).resize((640, 480), Image.BILINEAR)
        scene.save(folder / f"scene-{i}.jpg", quality=90)


def _annotate(src: Path, dst: Path, segmenter: Segmenter, *, jpeg_draft: bool) -> dict:
    run_shard(src, dst, segmenter, batch_size=4, jpeg_draft=jpeg_draft)
    return {p.name: np.asarray(Image.open(p)) for p in sorted((dst / "panoptic").rglob("*.png"))}


def test_drafted_outputs_are_full_size_and_agree_with_a_full_decode(tmp_path):
    """The demo model on its own kind of scene: the same segments, at the image's size, with
    all but a sliver of the pixels in the same category."""
    _scenes(tmp_path / "src", 6)
    segmenter = Segmenter("builtin:demo")
    full = _annotate(tmp_path / "src", tmp_path / "full", segmenter, jpeg_draft=False)
    draft = _annotate(tmp_path / "src", tmp_path / "draft", segmenter, jpeg_draft=True)
    assert sorted(full) == sorted(draft) and len(full) == 6
    rows = {}
    for name in ("full", "draft"):
        tables = sorted((tmp_path / name / "tables" / "segments").rglob("*.parquet"))
        rows[name] = [row for t in tables for row in pq.read_table(t).to_pylist()]
    assert len(rows["draft"]) == len(rows["full"]) > 6
    for png_name in full:
        assert full[png_name].shape == draft[png_name].shape == (480, 640, 3)
        differing = np.any(full[png_name] != draft[png_name], axis=-1).mean()
        assert differing < 0.01, f"{png_name}: {differing:.2%} of pixels differ"


def test_the_setting_is_part_of_the_destinations_fingerprint():
    """A resume with the other decode would mix two kinds of output: the guard names it."""
    plain = JobConfig("src", "dst").fingerprint()
    drafted = JobConfig("src", "dst", jpeg_draft=True).fingerprint()
    assert setting_differences(plain, drafted) == ["jpeg_draft: False -> True"]
