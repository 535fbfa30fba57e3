"""Publishing the model folder that `annotate --model` loads, at `--out` (local or object store)."""

from __future__ import annotations

import os
from typing import Any

from segpipe.io.storage import Folder
from segpipe.train.checkpoints import MODEL_DIR

CARD_FILE = "MODEL_CARD.md"
# Written last: a reader that sees config.json sees a whole model (loading checks for it).
LAST = "config.json"


def publish(checkpoint_folder: str, out: str, card: str, storage_options: dict[str, Any]) -> list[str]:
    """Copy the checkpoint's model folder to `out` with the model card; the keys written."""
    source = os.path.join(checkpoint_folder, MODEL_DIR)
    folder = Folder(out, storage_options)
    names = sorted(n for n in os.listdir(source) if os.path.isfile(os.path.join(source, n)))
    names.sort(key=lambda n: n == LAST)
    folder.write_bytes(CARD_FILE, card.encode())
    for name in names:
        with open(os.path.join(source, name), "rb") as f:
            folder.write_bytes(name, f.read())
    return [CARD_FILE, *names]
