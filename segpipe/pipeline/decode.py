"""Bytes to RGB pixels, with the checks that keep bad input from crashing a worker."""

from __future__ import annotations

import io
import warnings
from functools import cache

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from segpipe.core.errors import SegpipeError
from segpipe.core.identity import content_hash
from segpipe.core.items import DecodedImage, ImageFailure, ImageRef

# The formats a data lake holds photos in. Pillow can open many more, some through
# external programs (EPS runs Ghostscript) or rarely exercised parsers; none of those
# is worth that risk on untrusted bytes.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP", "PPM", "AVIF")


class DecodeError(SegpipeError, ValueError):
    pass


@cache
def supported_formats() -> tuple[str, ...]:
    """FORMATS that this Pillow build can read."""
    Image.init()
    return tuple(name for name in FORMATS if name in Image.OPEN)


def decode_image(ref: ImageRef, data: bytes, *, max_pixels: int,
                 draft_to: int | None = None) -> DecodedImage | ImageFailure:
    """Decode the first frame to RGB uint8, EXIF orientation applied.

    The pixel limit is checked on the header before any pixel is decoded, so a
    decompression bomb costs nothing. With `draft_to`, a JPEG decodes at the smallest of
    libjpeg's 1/2, 1/4 and 1/8 scales whose sides are both at least that many pixels, and the
    image keeps its stored size for the outputs. Any failure is the image's: it becomes an
    ImageFailure naming the URI, never an exception.
    """
    try:
        pixels, stored_size = _decode(data, max_pixels, draft_to)
        return DecodedImage(ref, pixels, content_hash(data), stored_size)
    except Exception as exc:  # noqa: BLE001 - Pillow's plugins raise more than OSError/ValueError
        return ImageFailure(ref, "decode", type(exc).__name__, f"{ref.display}: {exc}")


def _allow_in_pillow(max_pixels: int) -> None:
    """Pillow refuses at open anything over twice its own process-wide limit, before our
    check runs; a job that raises --max-image-pixels raises Pillow's limit with it."""
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels


def _over_limit(width: int, height: int, max_pixels: int) -> DecodeError:
    return DecodeError(f"image is {width}x{height} = {width * height} pixels, over the limit of "
                       f"{max_pixels} (raise --max-image-pixels to allow it)")


def _decode(data: bytes, max_pixels: int,
            draft_to: int | None) -> tuple[np.ndarray, tuple[int, int] | None]:
    """The pixels, and the image's (H, W) when they are a reduced-size draft."""
    if not data:
        raise DecodeError("empty file (0 bytes)")
    _allow_in_pillow(max_pixels)
    with warnings.catch_warnings():
        # Pillow warns (rather than raises) between its limit and twice it; we decide here.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            opened = Image.open(io.BytesIO(data), formats=supported_formats())
        except UnidentifiedImageError:
            # Pillow's own message names the in-memory buffer, which differs on every
            # attempt; an errors row must be the same bytes when a shard is retried.
            raise DecodeError(f"not an image, or not one of {', '.join(supported_formats())} "
                              f"({len(data)} bytes)") from None
        except Image.DecompressionBombError as exc:
            raise DecodeError(f"image header claims more than {max_pixels} pixels, the "
                              "decompression-bomb limit (raise --max-image-pixels to allow it); "
                              f"Pillow: {exc}") from None
        with opened as img:
            width, height = img.size
            if width * height > max_pixels:
                raise _over_limit(width, height, max_pixels)
            if width < 1 or height < 1:
                raise DecodeError(f"image has no pixels ({width}x{height})")
            img.seek(0)  # first frame of animated GIF / multi-page TIFF
            stored_size = _drafted(img, draft_to) if draft_to else None
            img.load()
            # In place, and no conversion of what is RGB already: each would copy the pixels.
            ImageOps.exif_transpose(img, in_place=True)
            rgb = _to_rgb(img)
            rgb.load()
            return np.array(rgb, dtype=np.uint8), stored_size  # writable, for torch.from_numpy


# EXIF orientations that turn the image a quarter: its (H, W) as viewed is (width, height).
QUARTER_TURNS = (5, 6, 7, 8)


def _drafted(img: Image.Image, draft_to: int) -> tuple[int, int] | None:
    """Ask a JPEG's decoder for a reduced-size draft whose sides are at least `draft_to`;
    the image's viewed (H, W) when it did, else None. Must run before the pixels load."""
    if img.format != "JPEG":
        return None
    width, height = img.size
    quarter = img.getexif().get(0x0112) in QUARTER_TURNS
    img.draft(img.mode, (draft_to, draft_to))
    if img.size == (width, height):
        return None  # full size already is the smallest that fits
    return (width, height) if quarter else (height, width)


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB for every mode Pillow reads: alpha composited on black, 16-bit scaled down."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        scaled = np.clip(arr * (255.0 / peak), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled).convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")
