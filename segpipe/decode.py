"""Bytes to RGB pixels, with the checks that keep bad input from crashing a worker."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from segpipe.identity import content_hash
from segpipe.records import DecodedImage, ImageFailure, ImageRef


class DecodeError(ValueError):
    pass


def decode_image(ref: ImageRef, data: bytes, *, max_pixels: int) -> DecodedImage | ImageFailure:
    """Decode the first frame to RGB uint8, EXIF orientation applied.

    The pixel limit is checked on the header before any pixel is decoded, so a
    decompression bomb costs nothing.
    """
    try:
        return DecodedImage(ref, _decode(data, max_pixels), content_hash(data))
    except (DecodeError, UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError) as exc:
        return ImageFailure(ref, "decode", type(exc).__name__, f"{ref.display}: {exc}")


def _decode(data: bytes, max_pixels: int) -> np.ndarray:
    if not data:
        raise DecodeError("empty file (0 bytes)")
    with warnings.catch_warnings():
        # Pillow warns (rather than raises) between its limit and twice it; we decide here.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise DecodeError(
                    f"image is {width}x{height} = {width * height} pixels, over the limit of "
                    f"{max_pixels} (raise --max-image-pixels to allow it)"
                )
            if width < 1 or height < 1:
                raise DecodeError(f"image has no pixels ({width}x{height})")
            img.seek(0)  # first frame of animated GIF / multi-page TIFF
            img = ImageOps.exif_transpose(img)
            rgb = _to_rgb(img)
            rgb.load()
            return np.asarray(rgb, dtype=np.uint8).copy()


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB for every mode Pillow reads: alpha composited on black, 16-bit scaled down."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(arr * (255.0 / peak), 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")
