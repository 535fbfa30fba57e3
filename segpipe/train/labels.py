"""The fine-tuned model's label set, and the base model's classifier head fitted to it.

The dataset's categories are the new label set, in category id order. A class the base
model knows (same name) keeps its classifier row; a new class gets a fresh row; a class
the dataset lacks is dropped. Every other weight is kept as it is.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from segpipe.labels import LabelSet


@dataclass(frozen=True)
class LabelPlan:
    categories: list[dict[str, Any]]  # new label index i is categories[i]
    keep: list[int | None]  # the base model's label index for each new index, or None: new

    @functools.cached_property
    def label_of(self) -> dict[int, int]:
        """Category id -> new label index (built once: the training loop asks every step)."""
        return {int(c["id"]): i for i, c in enumerate(self.categories)}

    @property
    def unchanged(self) -> bool:
        return self.keep == list(range(len(self.keep)))

    def describe(self, base: LabelSet) -> dict[str, list[str]]:
        kept = {k for k in self.keep if k is not None}
        return {
            "new": [c["name"] for c, k in zip(self.categories, self.keep, strict=True) if k is None],
            "dropped": [base.category(m).name for m in sorted(base.model_to_category)
                        if m not in kept],
        }


def _norm(name: str) -> str:
    return " ".join(name.strip().lower().replace("_", " ").replace("-", " ").split())


def plan_labels(categories: list[dict[str, Any]], base: LabelSet, num_base_labels: int) -> LabelPlan:
    """Map the dataset's categories onto the base model's label indices by name."""
    ordered: list[dict[str, Any]] = sorted(
        ({"id": int(c["id"]), "name": str(c["name"]), "isthing": int(c["isthing"]),
          "color": list(c.get("color") or _color(int(c["id"])))} for c in categories),
        key=lambda c: int(c["id"]))
    by_name: dict[str, int] = {}
    for index in range(num_base_labels):
        if index in base.model_to_category:
            by_name.setdefault(_norm(base.category(index).name), index)
    return LabelPlan(ordered, [by_name.get(_norm(c["name"])) for c in ordered])


def _color(category_id: int) -> tuple[int, int, int]:
    rng = torch.Generator().manual_seed(category_id)
    return tuple(int(v) for v in torch.randint(0, 256, (3,), generator=rng))  # type: ignore[return-value]


def refit_head(model: Any, plan: LabelPlan) -> Any:
    """`model` with its label set replaced by the plan's: a new model of the same class and
    config (but the labels), every weight copied, the classifier's rows picked by the plan.

    The classifiers are the linear layers named for classes with the old label count + 1
    outputs ("no object" last); buffers derived from the label count (the loss's class
    weights) come from the new model's own constructor.
    """
    names = [c["name"] for c in plan.categories]
    config = model.config.__class__.from_dict(model.config.to_dict())
    config.id2label = dict(enumerate(names))
    config.label2id = {n: i for i, n in enumerate(names)}
    config.num_labels = len(names)
    old_rows = int(model.config.num_labels) + 1
    new_model = model.__class__(config)
    heads = {f"{name}.{p}" for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and "class" in name.rsplit(".", 1)[-1]
             and module.out_features == old_rows for p in ("weight", "bias")}
    old_state = model.state_dict()
    new_state = new_model.state_dict()
    rows = [*[-1 if k is None else k for k in plan.keep], old_rows - 1]
    for key, value in new_state.items():
        old = old_state[key]
        if key in heads:
            fresh = value.clone()
            for new_index, old_index in enumerate(rows):
                if old_index >= 0:
                    fresh[new_index] = old[old_index]
            new_state[key] = fresh
        elif old.shape == value.shape:
            new_state[key] = old.clone()
    if not heads:
        raise ValueError(f"found no classifier with {old_rows} outputs in {type(model).__name__}")
    new_model.load_state_dict(new_state)
    return new_model
