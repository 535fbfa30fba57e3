"""The review priority: computed from the logits, higher where the model is unsure."""

from __future__ import annotations

import pytest
import torch

from segpipe.core.items import DecodedImage, ImageRef, Prediction
from segpipe.model.postprocess.priority import review_priority
from segpipe.model.segmenter import Segmenter
from segpipe.pipeline.decode import decode_image
from tests.support.images import write_images

CLASSES = 4  # + "no object"


def logits(top: list[tuple[int, float, float]], *, size=(16, 16), soft: float = 0.0):
    """One image: per query (label, its logit, the runner-up's logit); masks whose left half
    is in, with `soft` the share of pixels whose probability sits at 0.5 (between 0.4 and 0.6)."""
    cls = torch.full((1, len(top), CLASSES + 1), -10.0)
    masks = torch.full((1, len(top), *size), -8.0)
    for q, (label, value, second) in enumerate(top):
        cls[0, q, label] = value
        cls[0, q, (label + 1) % (CLASSES + 1)] = second
        masks[0, q, :, : size[1] // 2] = 8.0
        soft_cols = round(soft * size[1] / 2)
        if soft_cols:
            masks[0, q, :, :soft_cols] = 0.0
    return cls, masks


def test_confident_crisp_queries_rank_last_and_doubt_ranks_first():
    crisp = logits([(0, 10.0, -10.0), (1, 10.0, -10.0)])
    torn = logits([(0, 10.0, 9.5), (1, 10.0, -10.0)])  # two classes nearly tied
    soft = logits([(0, 10.0, -10.0), (1, 10.0, -10.0)], soft=0.75)  # masks unsure of their edges
    found_nothing = logits([(CLASSES, 10.0, -10.0)])  # every query says "no object"
    p = {name: float(review_priority(*x, threshold=0.5)[0])
         for name, x in [("crisp", crisp), ("torn", torn), ("soft", soft),
                         ("nothing", found_nothing)]}
    assert p["crisp"] == pytest.approx(0.0, abs=1e-4)
    assert p["crisp"] < p["torn"] < 1 and p["crisp"] < p["soft"] < 1
    # stability = 1 - soft share = 0.25, margin = 1: confidence 0.8 * 0.25 + 0.2 * 1 = 0.4
    assert p["soft"] == pytest.approx(0.6, abs=1e-4)
    assert p["nothing"] == 1.0


def test_near_misses_count_and_faint_queries_do_not():
    sure = logits([(0, 10.0, -10.0)])
    near = logits([(0, 10.0, -10.0), (1, 0.0, 0.0)])  # a query at ~0.33: below 0.5, above 0.25
    faint = logits([(0, 10.0, -10.0), (1, 0.0, 0.0)])
    faint[0][0, 1] = 0.0  # five classes at 0.2 each: below a quarter, not counted
    value = lambda x: float(review_priority(*x, threshold=0.5)[0])  # noqa: E731
    assert value(near) > value(sure) + 0.05  # a tie of two classes: margin 0
    assert value(faint) == pytest.approx(value(sure), abs=1e-6)


def test_priorities_are_per_image_of_a_batch_and_in_bounds():
    a, b = logits([(0, 10.0, -10.0)]), logits([(0, 10.0, 9.9)])
    cls, masks = torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])
    out = review_priority(cls, masks, threshold=0.5)
    assert out.shape == (2,) and out[0] < out[1] and bool(((out >= 0) & (out <= 1)).all())


@pytest.mark.parametrize("task", ["panoptic", "instance", "semantic"])
def test_every_prediction_of_the_model_stage_has_a_priority(tmp_path, tiny_model, task):
    paths = write_images(tmp_path, 3, seed=3)
    images = [decode_image(ImageRef(n, str(path)), path.read_bytes(), max_pixels=10**7)
              for n, path in enumerate(paths)]
    assert all(isinstance(image, DecodedImage) for image in images)
    preds = Segmenter(tiny_model, task=task)(images)
    assert len(preds) == 3 and all(isinstance(p, Prediction) for p in preds)
    assert all(p.review_priority is not None and 0 <= p.review_priority <= 1 for p in preds)
