"""How an export names each image: the source URI, or an HTTP URL, or a CVAT frame name.

`image_prefix` rewrites a URI for tools that load images over HTTP. The part of the URI
named by `image_root` is replaced by the prefix and the rest is percent-encoded:

    image_root  default: the URI's scheme and bucket ("s3://lake/"), or "/" for local paths
    s3://lake/raw/2026/a b.jpg   + prefix https://cdn.example.com/lake/
                                -> https://cdn.example.com/lake/raw/2026/a%20b.jpg
    with image_root="s3://lake/raw/"  -> https://cdn.example.com/lake/2026/a%20b.jpg

A prefix that ends in `=` takes the path as a query value, with no slash before it:
`--image-prefix '/data/local-files/?d=lake'` names Label Studio's local files (see README).

A URI outside `image_root` is an error, never a silently wrong link. An image inside a
container (a tar member, a Parquet row) has no URI of its own: it is named
`<container URI>#<member>`, and tools cannot load it without extracting it first.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from segpipe.core.identity import duplicate_ids
from segpipe.core.identity import image_id as name_hash
from segpipe.destination.reader import AnnotatedImage


@dataclass(frozen=True)
class ImageNaming:
    image_prefix: str | None = None
    image_root: str | None = None

    def uri(self, image: AnnotatedImage) -> str:
        """Where a review tool loads the image from."""
        if self.image_prefix is None:
            base = image.image_uri
        else:
            base = join_prefix(self.image_prefix, quote(self.relative(image.image_uri)))
        return base if image.member is None else f"{base}#{quote(image.member)}"

    def relative(self, uri: str) -> str:
        """`uri` without its root: the key inside the bucket, or the path below `image_root`."""
        root = self.image_root if self.image_root is not None else default_root(uri)
        root = root if root.endswith("/") else root + "/"
        if not uri.startswith(root):
            raise ValueError(f"image {uri} is not under the image root {root}")
        return uri[len(root):]

    def cvat_name(self, image: AnnotatedImage) -> str:
        """The frame name CVAT matches: the path below `image_root` when one is given
        (keeps folders apart), else the file's base name."""
        path = image.member if image.member is not None else image.image_uri
        if self.image_root is not None and image.member is None:
            return self.relative(path)
        return posixpath.basename(path.split("?", 1)[0])


def join_prefix(prefix: str, relative: str) -> str:
    """`prefix` + `relative`, one slash between them, none after a query's `=`: Label
    Studio's local files take `/data/local-files/?d=<path below its document root>`."""
    if prefix.endswith("="):
        return prefix + relative
    return prefix.rstrip("/") + "/" + relative


def default_root(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.scheme and parts.scheme != "file" and parts.netloc:
        return f"{parts.scheme}://{parts.netloc}/"
    return "file:///" if parts.scheme == "file" else "/"


def refuse_duplicate_cvat_names(images: Iterable[AnnotatedImage], naming: ImageNaming) -> None:
    """CVAT matches annotations to frames by name: two images with one name would get
    each other's masks, so refuse, and say how to keep the folders in the names.

    Names are hashed to 8-byte ids while counting, so memory stays small."""
    # CVAT compares names without their extension: a.jpg and a.png are one frame to it.
    repeated = duplicate_ids(name_hash(posixpath.splitext(naming.cvat_name(image))[0])
                             for image in images)
    if repeated:
        raise ValueError(
            f"{len(repeated)} file name(s) are shared by several images; CVAT matches "
            "annotations to frames by name. Pass image_root (--image-root) to name images by "
            "their path below it, as the CVAT task's frames are named.")
