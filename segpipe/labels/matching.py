"""Matching a checkpoint's id2label (model label index -> name) onto a label set: a label map
file, a bundled set that fits, or a set built from the names themselves."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from segpipe.io.storage import read_url
from segpipe.labels.categories import BUNDLED, Category, LabelSet, bundled, hash_color

_log = logging.getLogger(__name__)

# Share of a model's labels that must match a bundled set for that set to be used.
MATCH_THRESHOLD = 0.95

# Names checkpoints use where they differ from a bundled set's names. HF's ADE20K checkpoints
# take the first word of each ADE objectInfo150 entry ("windowpane", "ashcan"), detectron2 a
# different one ("window", "trash can"); a few COCO names also have common spellings.
_ALIASES: dict[str, dict[str, tuple[str, ...]]] = {
    "coco_panoptic": {
        "airplane": ("aeroplane",),
        "motorcycle": ("motorbike",),
        "tv": ("tvmonitor", "tv monitor", "television"),
        "hair drier": ("hair dryer",),
        "donut": ("doughnut",),
    },
    "ade20k": {
        "window": ("windowpane",),
        "tub": ("bathtub", "bath"),
        "rail": ("railing",),
        "street lamp": ("streetlight",),
        "tv": ("television receiver", "television", "tv set"),
        "plane": ("airplane", "aeroplane"),
        "clothes": ("apparel", "wearing apparel"),
        "pool": ("swimming pool",),
        "falls": ("waterfall",),
        "trash can": ("ashcan", "garbage can", "dustbin"),
    },
}

# COCO panoptic marks merged or catch-all classes with these words; other label lists drop them
# ("wall" for "wall-other-merged"), so they are dropped as a last resort only.
_DROPPABLE = ("merged", "other", "stuff")


def _norm(name: str) -> str:
    text = name.strip().lower().replace("-", " ").replace("_", " ")
    return " ".join(text.split())


def _synonyms(name: str) -> list[str]:
    """ADE-style names list synonyms, comma-separated ("road, route")."""
    return [s for s in (_norm(p) for p in name.split(",")) if s]


def _strip_droppable(key: str) -> str:
    words = key.split()
    while len(words) > 1 and words[-1] in _DROPPABLE:
        words.pop()
    return " ".join(words)


class _NameIndex:
    """Looks a label name up among categories, from the strictest rule to the loosest."""

    def __init__(self, categories: Iterable[Category], aliases: dict[str, tuple[str, ...]]):
        self.tiers: list[dict[str, set[int]]] = [{} for _ in range(5)]
        full, head, alias, syn, stripped = self.tiers
        alias_by_name = {_norm(k): v for k, v in aliases.items()}
        for c in categories:
            key = _norm(c.name)
            parts = _synonyms(c.name) or [key]
            full.setdefault(key, set()).add(c.id)
            head.setdefault(parts[0], set()).add(c.id)
            for a in alias_by_name.get(key, ()) + alias_by_name.get(parts[0], ()):
                alias.setdefault(_norm(a), set()).add(c.id)
            for p in parts:
                syn.setdefault(p, set()).add(c.id)
            stripped.setdefault(_strip_droppable(key), set()).add(c.id)

    def lookup(self, label: str) -> int | None:
        key = _norm(label)
        parts = _synonyms(label) or [key]
        keys = (key, parts[0], key, key, _strip_droppable(key))
        for tier, k in zip(self.tiers, keys, strict=True):
            ids = tier.get(k, set())
            # An ambiguous name ("screen" is in three ADE entries) falls through to a looser
            # tier rather than picking one at random.
            if len(ids) == 1:
                return next(iter(ids))
        return None


def _as_id2label(id2label: dict[Any, str]) -> dict[int, str]:
    if not id2label:
        raise ValueError("the model has no id2label: cannot build its label set")
    return {int(k): str(v) for k, v in sorted(id2label.items(), key=lambda kv: int(kv[0]))}


def _describe(labels: dict[int, str], limit: int = 10) -> str:
    shown = ", ".join(f"{i} ({n!r})" for i, n in list(labels.items())[:limit])
    more = len(labels) - limit
    return shown + (f" and {more} more" if more > 0 else "")


def _match_bundled(name: str, id2label: dict[int, str]) -> tuple[dict[int, int], dict[int, str]]:
    index = _NameIndex(bundled(name), _ALIASES.get(name, {}))
    matched: dict[int, int] = {}
    unmatched: dict[int, str] = {}
    for m, label in id2label.items():
        cid = index.lookup(label)
        if cid is None:
            unmatched[m] = label
        else:
            matched[m] = cid
    return matched, unmatched


def _from_bundled(name: str, id2label: dict[int, str], matched: dict[int, int],
                  unmatched: dict[int, str], model: str) -> LabelSet:
    categories = list(bundled(name))
    mapping = dict(matched)
    if unmatched:
        # Keep every model label addressable: the few the set lacks get categories of their own,
        # after the set's ids, as things (there is no metadata to say otherwise).
        next_id = max(c.id for c in categories) + 1
        for m, label in unmatched.items():
            categories.append(Category(next_id, label.strip(), True, hash_color(label)))
            mapping[m] = next_id
            next_id += 1
        _log.warning("label set %s: %d of %d labels of %s not in the set, added as things: %s",
                     name, len(unmatched), len(id2label), model, _describe(unmatched))
    return LabelSet(name, tuple(categories), dict(sorted(mapping.items())))


def _from_id2label(id2label: dict[int, str], model: str) -> LabelSet:
    # Ids start at 1 so that 0 never names a category: tools read 0 as void or background.
    cats = tuple(Category(m + 1, label.strip(), True, hash_color(label))
                 for m, label in id2label.items())
    _log.warning("%s: its labels match no bundled label set (%s); using its own %d labels, "
                 "all as things (no thing/stuff metadata); pass a label map to set it",
                 model, ", ".join(BUNDLED), len(cats))
    return LabelSet("model", cats, {m: m + 1 for m in id2label})


def match_label_set(id2label: dict[int, str], *, label_map: str | None = None,
                    preferred: str | None = None, model: str | None = None) -> LabelSet:
    """The label set for a checkpoint's `config.id2label` (model label index -> name).

    A `label_map` file wins. Else the bundled set that matches at least 95% of the model's
    labels (`preferred` names the one to use, and it must match). Else a set built from
    id2label itself: ids are index + 1, every class a thing, colors hashed from the names.
    `model` only names the checkpoint in messages.
    """
    labels = _as_id2label(id2label)
    who = f"model {model}" if model else "the model"
    if label_map is not None:
        return label_set_from_file(label_map, labels, model=model)
    if preferred is not None:
        if preferred not in BUNDLED:
            raise ValueError(f"unknown label set {preferred!r}; bundled: {', '.join(BUNDLED)}")
        matched, unmatched = _match_bundled(preferred, labels)
        if len(matched) < MATCH_THRESHOLD * len(labels):
            raise ValueError(f"label set {preferred} does not fit {who}: {len(unmatched)} of "
                             f"{len(labels)} labels unmatched: {_describe(unmatched)}")
        return _from_bundled(preferred, labels, matched, unmatched, who)
    best: tuple[float, float, int, str] | None = None
    results = {}
    for order, name in enumerate(BUNDLED):
        matched, unmatched = _match_bundled(name, labels)
        results[name] = (matched, unmatched)
        # Most labels matched first; on a tie (a model of a few common classes) the set it
        # covers most, then the bundled order.
        score = (len(matched) / len(labels), len(set(matched.values())) / len(bundled(name)),
                 -order, name)
        if best is None or score > best:
            best = score
    assert best is not None
    if best[0] >= MATCH_THRESHOLD:
        name = best[3]
        return _from_bundled(name, labels, *results[name], who)
    return _from_id2label(labels, who)


def _load_label_map(url: str) -> list[dict[str, Any]]:
    obj = json.loads(read_url(url))
    # A COCO annotation file works as is: its "categories" are the list.
    if isinstance(obj, dict):
        obj = obj.get("categories")
    if not isinstance(obj, list) or not all(isinstance(c, dict) for c in obj):
        raise ValueError(f"label map {url}: expected a JSON list of category objects")
    return obj


def label_set_from_file(url: str, id2label: dict[int, str], *,
                        model: str | None = None) -> LabelSet:
    """A label set from a JSON file (path or fsspec URL) of categories.

    Each category has "id" and "name", optionally "isthing" (default 1), "color" (default
    hashed from the name) and "model_label" (an index or a list of indices); categories without
    "model_label" are matched to the model's labels by name. Every model label must be covered.
    """
    labels = _as_id2label(id2label)
    who = f"model {model}" if model else "the model"
    raw = _load_label_map(url)
    cats: list[Category] = []
    explicit: dict[int, int] = {}
    by_name: list[Category] = []
    for i, c in enumerate(raw):
        if "id" not in c or "name" not in c:
            raise ValueError(f"label map {url}: category {i} needs an id and a name")
        name = str(c["name"])
        color = c.get("color") or hash_color(name)
        cat = Category(int(c["id"]), name, bool(int(c.get("isthing", 1))),
                       tuple(int(v) for v in color))  # type: ignore[arg-type]
        cats.append(cat)
        if "model_label" not in c:
            by_name.append(cat)
            continue
        targets = c["model_label"] if isinstance(c["model_label"], list) else [c["model_label"]]
        for t in targets:
            m = int(t)
            if m not in labels:
                raise ValueError(f"label map {url}: category {name!r} names model label {m}, "
                                 f"which {who} does not have")
            if m in explicit and explicit[m] != cat.id:
                raise ValueError(f"label map {url}: model label {m} ({labels[m]!r}) is given "
                                 "to two categories")
            explicit[m] = cat.id
    ids = [c.id for c in cats]
    if len(set(ids)) != len(ids):
        raise ValueError(f"label map {url}: category ids are not unique")
    mapping = dict(explicit)
    index = _NameIndex(by_name, {})
    for m, label in labels.items():
        if m not in mapping and (cid := index.lookup(label)) is not None:
            mapping[m] = cid
    missing = {m: n for m, n in labels.items() if m not in mapping}
    if missing:
        raise ValueError(f"label map {url} does not cover {len(missing)} label(s) of {who}: "
                         f"{_describe(missing)}")
    return LabelSet("custom", tuple(cats), dict(sorted(mapping.items())))
