"""Category colors as the gallery and Label Studio configs write them."""

from __future__ import annotations

from segpipe.formats.colors import hex_color


def test_hex_color_is_two_lowercase_digits_per_channel():
    assert hex_color((0, 10, 255)) == "#000aff"
    assert hex_color((171, 205, 239)) == "#abcdef"
