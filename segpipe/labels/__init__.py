"""Label sets: the output categories (id, name, isthing, color) and how a model's
label indices map onto them.

Bundled sets live beside this package as JSON (a list of category objects).
"""

from segpipe.labels.categories import (
    BUNDLED,
    Category,
    LabelSet,
    bundled,
    hash_color,
    load_categories,
)
from segpipe.labels.matching import MATCH_THRESHOLD, label_set_from_file, match_label_set

__all__ = [
    "BUNDLED",
    "MATCH_THRESHOLD",
    "Category",
    "LabelSet",
    "bundled",
    "hash_color",
    "label_set_from_file",
    "load_categories",
    "match_label_set",
]
