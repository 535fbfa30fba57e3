"""Signed URIs in a plan: stored redacted, with a locator to re-read the real one.

A manifest or a URI table may list presigned URLs, whose query strings are credentials.
The plan lives under DST, so a ref whose URI carries secrets (`strip_credentials(uri) != uri`)
is listed with its redacted URI, which is also what identifies the image, and a locator:
where its source lists the real URI (a manifest record's bytes, a table's row). When a
worker fetches, the source re-reads those places for the whole shard at once, and each
URI it finds must redact to the planned one. One that doesn't means the source was edited
after planning: that image becomes an errors row, and the rest of the shard goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from segpipe.identity import image_id
from segpipe.records import ImageRef
from segpipe.storage import redact_uri, strip_credentials


class SourceChangedError(ValueError):
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


def checked(ref: ImageRef, uri: str | None, *, source: str, where: str) -> str | SourceChangedError:
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
