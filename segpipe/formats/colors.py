"""Category colors as HTML and Label Studio configs write them."""

from __future__ import annotations


def hex_color(color: tuple[int, int, int]) -> str:
    """`(r, g, b)` as `#rrggbb`."""
    return "#{:02x}{:02x}{:02x}".format(*color)
