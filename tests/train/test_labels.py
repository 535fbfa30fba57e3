"""A label set that differs from the base model's: the classifier head is refitted, the rest kept."""

from __future__ import annotations

import pytest
import torch

from segpipe.model.loading import load_model
from segpipe.train.labels import plan_labels, refit_head


def test_new_and_dropped_classes_refit_the_head_and_keep_every_other_weight():
    loaded = load_model("builtin:demo", device="cpu")
    base = loaded.model
    categories = [c.to_coco() for c in loaded.label_set.categories if c.name != "star"]
    categories.append({"id": 40, "name": "Hexagon", "isthing": 1, "color": [1, 2, 3]})
    plan = plan_labels(categories, loaded.label_set, base.config.num_labels)
    assert plan.describe(loaded.label_set) == {"new": ["Hexagon"], "dropped": ["star"]}
    model = refit_head(base, plan)
    old_w, new_w = base.class_predictor.weight, model.class_predictor.weight
    assert new_w.shape == old_w.shape  # 8 labels + no-object, as before, but other rows
    assert torch.equal(new_w[3], old_w[4])  # ellipse moved up one row
    assert torch.equal(new_w[-1], old_w[-1])  # "no object" stays last
    assert not torch.equal(new_w[7], old_w[3])  # hexagon is fresh, not star's row
    assert model.config.id2label[7] == "Hexagon" and model.config.num_labels == 8
    old_state, new_state = base.state_dict(), model.state_dict()
    kept = [k for k in old_state if "class_predictor" not in k]
    assert all(torch.equal(old_state[k], new_state[k]) for k in kept)


def test_fewer_classes_shrink_the_head_and_the_loss_weights():
    loaded = load_model("builtin:demo", device="cpu")
    categories = [c.to_coco() for c in loaded.label_set.categories][:3]
    model = refit_head(loaded.model, plan_labels(categories, loaded.label_set, 8))
    assert model.class_predictor.out_features == 4
    assert model.criterion.empty_weight[-1].item() == pytest.approx(model.config.no_object_weight)
    assert len(model.criterion.empty_weight) == 4
