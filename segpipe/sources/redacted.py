"""Signed URIs in a plan: stored redacted, with a locator to re-read the real one.

A manifest or a URI table may list presigned URLs, whose query strings are credentials.
The plan lives under DST, so a ref whose URI carries secrets (`strip_credentials(uri) != uri`)
is listed with its redacted URI, which is also what identifies the image, and a locator:
where its source lists the real URI (a manifest entry's bytes, a table's row). When a
worker fetches, the source re-reads those places for the whole shard at once, and each
URI it finds must redact to the planned one. One that doesn't means the source was edited
after planning: that image becomes an errors row, and the rest of the shard goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from segpipe.core.errors import SegpipeError
from segpipe.core.identity import image_id
from segpipe.core.items import ImageFailure, ImageRef
from segpipe.io.storage import redact_uri, strip_credentials


class SourceChangedError(SegpipeError, ValueError):
    """The source no longer lists, where the plan says, the image the plan names."""


# Given the refs planned with a locator: image id -> real URI, or the error that left it
# unknown. Transient errors are raised instead, so that the shard is retried later.
Recover = Callable[[list[ImageRef]], dict[int, "str | BaseException"]]


def uri_ref(uri: str, fields: dict[str, Any] | None, locator: Callable[[], str]) -> ImageRef:
    """The ref of an image a list names by URI. Identity comes from the redacted URI (two
    signatures of one object are one image); a signed URI is kept redacted, with where
    `locator()` says the list holds it."""
    shown = strip_credentials(uri)
    if shown == uri:
        return ImageRef(image_id(uri), uri, fields=fields or None)
    return ImageRef(image_id(shown), shown, fields=fields or None, locator=locator())


def uri_if_unchanged(ref: ImageRef, uri: str | None, *, source: str,
                     where: str) -> str | SourceChangedError:
    """`uri`, re-read from the place `ref` was planned from, if it is still the image planned.

    `source` and `where` name the list and the place in it, for the error otherwise.
    """
    if uri is not None and strip_credentials(uri) == ref.uri:
        return uri
    message = f"{source} changed since this run was planned: {where} no longer lists this image"
    if uri is not None:
        # The URI goes last: `redact` takes what follows a redacted value, up to a space, too.
        message += f" but {redact_uri(uri)}"
    return SourceChangedError(message)


# The locator of a ref whose own name (a file's, a tar member's) has the shape of a
# credential: the plan keeps it stripped, no source can re-read it, and the worker makes it
# an errors row. Such a name is far more likely an odd file name than a secret, but it is
# not ours to tell, and one odd name must not stop the whole job.
WITHHELD = "<name withheld>"


def storable(ref: ImageRef) -> ImageRef:
    """`ref` as the plan may store it: unchanged, or withheld when it still has a credential's
    shape (a source that can re-read signed URIs has already stripped and located them)."""
    parts = (ref.uri, ref.member, ref.locator)
    if all(text is None or strip_credentials(text) == text for text in parts):
        return ref
    member = None if ref.member is None else strip_credentials(ref.member)
    return ImageRef(ref.image_id, strip_credentials(ref.uri), member, ref.version, ref.fields,
                    WITHHELD)


def withheld_failure(ref: ImageRef) -> ImageFailure:
    return ImageFailure(ref, "read", "CredentialShapedName",
                        f"{ref.display}: not read, because its name has the shape of a signed URL "
                        "or user:password, which is never stored in the plan; rename it, or "
                        "list it in a manifest")
