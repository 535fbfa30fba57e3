"""Source images as the model saw them, for tools that draw over them (preview, export)."""

from __future__ import annotations

from typing import Any

import numpy as np

from segpipe.core.items import ImageFailure
from segpipe.destination.reader import AnnotatedImage, run_config
from segpipe.io.storage import Folder, filesystem, with_retries
from segpipe.pipeline.decode import decode_image
from segpipe.sources import open_source


def read_source_pixels(dst: Folder, image: AnnotatedImage, *,
                       storage_options: dict[str, Any] | None = None,
                       max_pixels: int = 89_478_485) -> np.ndarray:
    """The source image as RGB uint8, oriented as the model saw it (EXIF applied), so it
    lines up with the id map. Images inside containers are read with the run's source."""
    ref = image.ref
    data = read_source_bytes(dst, image, storage_options=storage_options)
    decoded = decode_image(ref, data, max_pixels=max_pixels)
    if isinstance(decoded, ImageFailure):
        raise OSError(decoded.message)
    return decoded.pixels




def read_source_bytes(dst: Folder, image: AnnotatedImage, *,
                      storage_options: dict[str, Any] | None = None) -> bytes:
    """The source image's bytes as stored; images inside containers are read with the
    run's source."""
    ref = image.ref
    if ref.member is None:
        fs, path = filesystem(ref.uri, storage_options)
        return bytes(with_retries(lambda: fs.cat_file(path), what=ref.uri, doing="reading"))
    config = run_config(dst, image.run_id)
    source = open_source(config.get("src") or ref.uri, source_format=config.get("source_format"),
                         storage_options=storage_options,
                         image_column=config.get("image_column"),
                         uri_column=config.get("uri_column"), id_column=config.get("id_column"))
    _, data = next(iter(source.fetch([ref], threads=1)))
    if isinstance(data, ImageFailure):
        raise OSError(data.message)
    return data
