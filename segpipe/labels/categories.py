"""Categories (id, name, isthing, color), label sets (a model's label indices mapped onto
categories) and the bundled sets, which live beside this package as JSON (a list of category
objects)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

BUNDLED = ("coco_panoptic", "ade20k", "cityscapes")


@dataclass(frozen=True, slots=True)
class Category:
    id: int
    name: str
    isthing: bool
    color: tuple[int, int, int]

    def to_coco(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "isthing": int(self.isthing),
                "color": list(self.color), "supercategory": self.name}


@dataclass(frozen=True)
class LabelSet:
    """Categories, and the model label index -> category id mapping."""

    name: str
    categories: tuple[Category, ...]
    model_to_category: dict[int, int]

    def category(self, model_label: int) -> Category:
        return self._by_id[self.model_to_category[model_label]]

    @property
    def _by_id(self) -> dict[int, Category]:
        return {c.id: c for c in self.categories}

    def thing_model_labels(self) -> set[int]:
        """Model label indices whose category is a thing: the instance task keeps only these."""
        return set(self.model_to_category) - self.stuff_model_labels()

    def stuff_model_labels(self) -> set[int]:
        """Model label indices whose category is stuff: fused into one segment per class."""
        by_id = self._by_id
        return {m for m, c in self.model_to_category.items() if not by_id[c].isthing}


def load_categories(obj: list[dict[str, Any]]) -> tuple[Category, ...]:
    return tuple(
        Category(int(c["id"]), str(c["name"]), bool(c["isthing"]), tuple(int(v) for v in c["color"]))  # type: ignore[arg-type]
        for c in obj
    )


def bundled(name: str) -> tuple[Category, ...]:
    text = resources.files(__package__).joinpath(f"{name}.json").read_text()
    return load_categories(json.loads(text))


def hash_color(name: str) -> tuple[int, int, int]:
    """A deterministic color for a name (the same in every process, unlike `hash`)."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    # Stay off near-black so the color never reads as void in previews.
    return (64 + digest[0] % 192, 64 + digest[1] % 192, 64 + digest[2] % 192)
