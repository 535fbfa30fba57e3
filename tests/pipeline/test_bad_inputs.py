"""Bad inputs end to end: every image ends annotated or as an errors row naming its URI, and
every other listed file is counted as skipped.

One job runs over a folder of every kind of bad and odd file (and one over WebDataset
tars with a corrupt member and a truncated end); the decode checks behind them are
also tested one by one, without Ray.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from segpipe.app.annotate import annotate
from segpipe.cli import main
from segpipe.core.config import JobConfig
from segpipe.core.items import DecodedImage, ImageFailure, ImageRef
from segpipe.destination.runs import check_settings, prepare_run
from segpipe.io.storage import Folder
from segpipe.pipeline.decode import decode_image
from segpipe.sources import open_source
from tests.support.outputs import read_id_map, read_panoptic, read_table

MAX_PIXELS = 5000  # the job's decompression-bomb limit: "big.png" is over it, the rest under
MAX_BYTES = 32 * 1024  # the job's limit of bytes per image: "heavy.jpg" is over it


def encode(img: Image.Image, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def noise(height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header claiming `width` x `height`, followed by a few bytes of data: the
    shape of a decompression bomb, without the gigabytes it would decode to."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b""))


def frames(fmt: str) -> bytes:
    """Two frames, red then green: decoding must give the first."""
    red, green = Image.new("RGB", (20, 10), (255, 0, 0)), Image.new("RGB", (20, 10), (0, 255, 0))
    return encode(red, fmt, save_all=True, append_images=[green])


def exif_rotated() -> bytes:
    """30 wide, 20 high as stored, with EXIF orientation 6 (rotate 90 degrees to view)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(noise(20, 30, seed=6), "JPEG", exif=exif.tobytes())


@dataclass(frozen=True)
class Case:
    data: bytes
    size: tuple[int, int] | None = None  # (height, width) when it must be annotated
    stage: str | None = None  # else the errors row's stage and a word of its reason
    reason: str | None = None


def bad_files() -> dict[str, Case]:
    photo = encode(noise(30, 40, seed=1), "JPEG")
    sixteen = np.linspace(0, 65535, 20 * 30).reshape(20, 30).astype(np.uint16)
    palette = noise(25, 35, seed=2).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return {
        "photo.jpg": Case(photo, (30, 40)),
        "truncated.jpg": Case(photo[: len(photo) // 2], stage="decode", reason="truncated"),
        "empty.jpg": Case(b"", stage="decode", reason="empty file"),
        "random.jpg": Case(np.random.default_rng(3).bytes(700), stage="decode",
                           reason="not an image"),
        "text.jpg": Case(b"just some notes, not an image\n" * 4, stage="decode",
                         reason="not an image"),
        # An EPS would run Ghostscript where it is installed: not a format we open.
        "postscript.jpg": Case(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n",
                               stage="decode", reason="not an image"),
        "png-named.jpg": Case(encode(noise(21, 33, seed=4), "PNG"), (21, 33)),
        "sixteen-bit.png": Case(encode(Image.fromarray(sixteen), "PNG"), (20, 30)),
        "gray.png": Case(encode(noise(22, 26).convert("L"), "PNG"), (22, 26)),
        "cmyk.jpg": Case(encode(noise(24, 28).convert("CMYK"), "JPEG"), (24, 28)),
        "palette.png": Case(encode(palette, "PNG", transparency=0), (25, 35)),
        "rgba.png": Case(encode(noise(26, 30).convert("RGBA"), "PNG"), (26, 30)),
        "exif-rotated.jpg": Case(exif_rotated(), (30, 20)),
        "one-pixel.png": Case(encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), (1, 1)),
        "big.png": Case(encode(noise(80, 100), "PNG"), stage="decode",
                        reason=f"over the limit of {MAX_PIXELS}"),
        "bomb.png": Case(png_claiming(100_000, 100_000), stage="decode",
                         reason="decompression-bomb limit"),
        "animated.gif": Case(frames("GIF"), (10, 20)),
        "pages.tif": Case(frames("TIFF"), (10, 20)),
        "photo.webp": Case(encode(noise(27, 31, seed=5), "WEBP"), (27, 31)),
        # Listed and planned, then gone before a worker reads it.
        "deleted.jpg": Case(photo, stage="read", reason="No such file or directory"),
        # A real JPEG, then far more bytes than any image here: refused unread.
        "heavy.jpg": Case(photo + bytes(MAX_BYTES), stage="read",
                          reason=f"{len(photo) + MAX_BYTES} bytes, over the limit of "
                                 f"{MAX_BYTES} bytes per image (--max-image-bytes)"),
    }


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_tars(folder: Path) -> dict[tuple[str, str], Case]:
    """`a.tar` holds a corrupt image member; `b.tar` is cut off inside its second image."""
    folder.mkdir(parents=True)
    good, other = encode(noise(30, 40, seed=7), "JPEG"), encode(noise(20, 24, seed=8), "PNG")
    with tarfile.open(folder / "a.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        add_member(tar, "0001.jpg", good)
        add_member(tar, "0001.cls", b"3")  # a label, not an image: not planned
        add_member(tar, "0002.jpg", b"\xff\xd8\xff\xe0 corrupt" + bytes(200))
        add_member(tar, "0003.png", other)
    whole = io.BytesIO()
    with tarfile.open(fileobj=whole, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        add_member(tar, "0001.png", other)
        add_member(tar, "0002.jpg", good)
    cut = 512 + -(-len(other) // 512) * 512 + 512 + len(good) // 2  # inside 0002.jpg's data
    (folder / "b.tar").write_bytes(whole.getvalue()[:cut])
    a, b = str(folder / "a.tar"), str(folder / "b.tar")
    return {
        (a, "0001.jpg"): Case(good, (30, 40)),
        (a, "0002.jpg"): Case(b"", stage="decode", reason="Truncated File Read"),
        (a, "0003.png"): Case(other, (20, 24)),
        (b, "0001.png"): Case(other, (20, 24)),
        (b, "0002.jpg"): Case(b"", stage="read", reason="unexpected end of data"),
        (b, "<unreadable>"): Case(b"", stage="read", reason="unexpected end of data"),
    }


# --- decode, one check at a time ---------------------------------------------------------------

def decoded(data: bytes, max_pixels: int = 10**6) -> DecodedImage | ImageFailure:
    return decode_image(ImageRef(1, "s3://bucket/raw/x.jpg"), data, max_pixels=max_pixels)


@pytest.mark.parametrize("name", sorted(set(bad_files()) - {"deleted.jpg", "heavy.jpg"}))
def test_each_file_decodes_or_fails_with_a_reason(name):
    case = bad_files()[name]
    out = decoded(case.data, MAX_PIXELS)
    if case.size is not None:
        assert isinstance(out, DecodedImage), out
        assert out.pixels.shape == (*case.size, 3) and out.pixels.dtype == np.uint8
    else:
        assert isinstance(out, ImageFailure)
        assert out.stage == case.stage
        assert out.message.startswith("s3://bucket/raw/x.jpg: ")
        assert case.reason in out.message.split(": ", 1)[1]


def test_first_frame_is_decoded():
    for fmt in ("GIF", "TIFF"):
        out = decoded(frames(fmt))
        assert isinstance(out, DecodedImage)
        assert out.pixels[..., 0].min() > 200 and out.pixels[..., 1].max() < 50, fmt


def test_exif_orientation_rotates_the_pixels():
    stored = np.asarray(Image.open(io.BytesIO(exif_rotated())).convert("RGB"))
    out = decoded(exif_rotated())
    assert isinstance(out, DecodedImage)
    assert stored.shape == (20, 30, 3) and out.pixels.shape == (30, 20, 3)
    # Orientation 6 is viewed rotated 90 degrees clockwise.
    assert np.array_equal(out.pixels, np.rot90(stored, k=-1))


def test_sixteen_bit_keeps_its_full_range():
    ramp = np.array([[0, 32768, 65535]], dtype=np.uint16)
    out = decoded(encode(Image.fromarray(ramp), "PNG"))
    assert isinstance(out, DecodedImage)
    assert out.pixels[0, :, 0].tolist() == [0, 127, 255]


def test_transparency_is_composited_on_black():
    img = Image.new("P", (4, 2))
    img.putpalette([255, 255, 255, 200, 10, 10])
    img.putdata([0, 1, 0, 1, 0, 1, 0, 1])
    out = decoded(encode(img, "PNG", transparency=0))  # palette entry 0 is transparent
    assert isinstance(out, DecodedImage)
    assert out.pixels[0, 0].tolist() == [0, 0, 0] and out.pixels[0, 1].tolist() == [200, 10, 10]


def test_a_raised_pixel_limit_is_the_one_that_counts(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after
    # 225M pixels: over twice Pillow's own default limit, which must not decide for a job
    # whose limit is 200M (nor open the image: the header alone is refused).
    header = png_claiming(15_000, 15_000)
    assert "decompression-bomb limit" in decoded(header).message
    raised = decoded(header, max_pixels=200_000_000)
    assert isinstance(raised, ImageFailure)
    assert "15000x15000 = 225000000 pixels, over the limit of 200000000" in raised.message


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns of the damage it skips
def test_mutated_images_never_raise_and_fail_the_same_way_twice():
    """Random byte damage to every format: decode returns a value, and an errors row
    repeats byte for byte when a shard is retried."""
    rng = np.random.default_rng(11)
    seeds = [c.data for c in bad_files().values() if c.size is not None]
    for data in seeds:
        for _ in range(25):
            damaged = bytearray(data)
            for pos in rng.integers(0, len(damaged), int(rng.integers(1, 8))):
                damaged[pos] = int(rng.integers(0, 256))
            damaged = bytes(damaged[: int(rng.integers(8, len(damaged) + 1))])
            first, second = decoded(damaged), decoded(damaged)
            assert type(first) is type(second)
            if isinstance(first, ImageFailure):
                assert first.message == second.message
                assert first.message.startswith("s3://bucket/raw/x.jpg: ")


# --- the jobs ----------------------------------------------------------------------------------

@dataclass
class FolderJob:
    src: Path
    dst: Path
    cases: dict[str, Case]
    rc: int
    stderr: str


@pytest.fixture(scope="module")
def folder_job(ray_cluster, tiny_model, tmp_path_factory) -> FolderJob:
    """The job over the folder of bad files, planned first, then one file deleted, then
    resumed by the CLI with --max-error-rate 0.1, which this folder's error rate exceeds."""
    root = tmp_path_factory.mktemp("bad-folder")
    src, dst = root / "src", root / "dst"
    src.mkdir()
    cases = bad_files()
    for name, case in cases.items():
        (src / name).write_bytes(case.data)
    (src / "notes.txt").write_text("not an image: skipped, and counted")
    os.mkfifo(src / "pipe.png")  # would hang a read for ever: skipped at listing, and counted
    options = ["--model", tiny_model, "--batch-size", "4", "--shard-size", "7",
               "--num-workers", "1", "--max-image-pixels", str(MAX_PIXELS),
               "--max-image-bytes", str(MAX_BYTES),
               "--max-error-rate", "0.1", "--no-progress"]
    config = JobConfig(src=str(src), dst=str(dst), model=tiny_model, batch_size=4, shard_size=7,
                       num_workers=1, max_image_pixels=MAX_PIXELS, max_error_rate=0.1)
    folder = Folder(str(dst))
    check_settings(folder, config)
    prepare_run(folder, config, open_source(str(src)))
    (src / "deleted.jpg").unlink()
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        rc = main(["annotate", str(src), str(dst), *options])
    return FolderJob(src, dst, cases, rc, stderr.getvalue())


def test_every_bad_file_is_annotated_or_an_error_row(folder_job):
    dst = Folder(str(folder_job.dst))
    uri = {name: str(folder_job.src / name) for name in folder_job.cases}
    image_rows, error_rows = read_table(dst, "images"), read_table(dst, "errors")
    images = {r["image_uri"]: r for r in image_rows}
    errors = {r["image_uri"]: r for r in error_rows}
    coco = read_panoptic(dst)
    annotated = {i["file_name"]: i for i in coco["images"]}
    # Inputs = annotated + errors, and each image has exactly one row.
    bad = sum(case.size is None for case in folder_job.cases.values())
    assert len(image_rows) == len(folder_job.cases) and set(images) == set(uri.values())
    assert (len(coco["images"]), len(error_rows)) == (len(folder_job.cases) - bad, bad)
    assert set(annotated) | set(errors) == set(images) and not set(annotated) & set(errors)
    pngs = {a["image_id"]: a["file_name"] for a in coco["annotations"]}
    for name, case in folder_job.cases.items():
        row = images[uri[name]]
        if case.size is not None:
            assert row["status"] == "ok", (name, row["error"])
            assert (row["height"], row["width"]) == case.size, name
            assert (annotated[uri[name]]["height"], annotated[uri[name]]["width"]) == case.size
            assert read_id_map(dst, pngs[row["image_id"]]).shape == case.size, name
        else:
            error = errors[uri[name]]
            assert row["status"] == "error" and row["error"] == error["message"], name
            assert error["stage"] == case.stage, (name, error)
            prefix = f"{uri[name]}: "
            assert error["message"].startswith(prefix), error["message"]
            reason = error["message"][len(prefix):]
            assert case.reason in reason, error


def test_the_exif_rotated_image_is_stored_rotated(folder_job):
    coco = read_panoptic(Folder(str(folder_job.dst)))
    entry = next(i for i in coco["images"] if i["file_name"].endswith("exif-rotated.jpg"))
    stored = Image.open(folder_job.src / "exif-rotated.jpg").size  # (width, height)
    assert stored == (30, 20) and (entry["width"], entry["height"]) == (20, 30)


def test_the_error_rate_gate_fails_the_job_after_committing_everything(folder_job):
    assert folder_job.rc == 1
    assert "--max-error-rate 10.0%" in folder_job.stderr
    assert "see the errors table" in folder_job.stderr
    summaries = list(folder_job.dst.glob("_segpipe/runs/*/summary.json"))
    assert len(summaries) == 1
    summary = json.loads(summaries[0].read_text())
    bad = sum(case.size is None for case in folder_job.cases.values())
    assert summary["status"] == "complete" and summary["shards"]["failed"] == 0
    assert (summary["images"], summary["errors"]) == (len(folder_job.cases), bad)
    assert summary["skipped"] == {"extension": 1, "not_regular_file": 1}
    assert summary["annotated"] + summary["errors"] == summary["images"]


def test_corrupt_and_truncated_tar_members(ray_cluster, tiny_model, tmp_path):
    cases = write_tars(tmp_path / "tars")
    dst = Folder(str(tmp_path / "dst"))
    summary = annotate(JobConfig(src=str(tmp_path / "tars"), dst=dst.url, model=tiny_model,
                                 batch_size=4, shard_size=4, num_workers=1, progress=False))
    assert summary["status"] == "complete"
    assert (summary["images"], summary["annotated"]) == (len(cases), 3)
    rows = {(r["image_uri"], r["member"]): r for r in read_table(dst, "images")}
    errors = {(r["image_uri"], r["member"]): r for r in read_table(dst, "errors")}
    assert set(rows) == set(cases)
    for key, case in cases.items():
        if case.size is not None:
            row = rows[key]
            assert row["status"] == "ok" and (row["height"], row["width"]) == case.size
        else:
            error = errors[key]
            assert error["stage"] == case.stage, error
            prefix = f"{key[0]}#{key[1]}: "
            assert error["message"].startswith(prefix), error["message"]
            assert case.reason in error["message"][len(prefix):], error["message"]
    coco = read_panoptic(dst)
    assert len(coco["images"]) == len(coco["annotations"]) == 3
