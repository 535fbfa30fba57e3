"""One reader for a whole file at any URL: what a folder wrote reads back, and a missing
file is an error that names its URL."""

from __future__ import annotations

import pytest

from segpipe.io.storage import Folder, describe_error, read_url


def test_a_url_reads_what_its_folder_wrote_and_a_missing_one_is_named(where):
    folder = Folder(where("data"))
    folder.write_bytes("a/b.bin", b"payload")
    assert read_url(folder.url_of("a/b.bin")) == b"payload" == folder.read_bytes("a/b.bin")

    missing = folder.url_of("a/none.bin")
    with pytest.raises(FileNotFoundError) as err:
        read_url(missing)
    assert describe_error(err.value).endswith(f"; while reading {missing}")
