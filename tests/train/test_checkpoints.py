"""A checkpoint written by training restores the same weights and optimizer state (no Ray)."""

from __future__ import annotations

import torch

from segpipe.model.loading import load_model
from segpipe.train.checkpoints import TrainState, read_checkpoint, write_checkpoint
from segpipe.train.labels import plan_labels


def test_a_checkpoint_restores_weights_optimizer_and_state(tmp_path, tiny_model):
    loaded = load_model(tiny_model, device="cpu")
    plan = plan_labels([c.to_coco() for c in loaded.label_set.categories], loaded.label_set,
                       loaded.model.config.num_labels)
    optimizer = torch.optim.AdamW(loaded.model.parameters(), lr=0.01)
    loaded.model.class_predictor.weight.sum().backward()
    optimizer.step()
    write_checkpoint(str(tmp_path), loaded.model, loaded.processor, plan, optimizer,
                     TrainState(epoch=3, step=12, history=[{"epoch": 3}]))

    fresh = load_model(tiny_model, device="cpu").model
    with torch.no_grad():
        for parameter in fresh.parameters():
            parameter.zero_()
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=0.01)
    state = read_checkpoint(str(tmp_path), fresh, fresh_optimizer)
    assert (state.epoch, state.step, state.history) == (3, 12, [{"epoch": 3}])
    for (name, a), b in zip(loaded.model.state_dict().items(), fresh.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    assert fresh_optimizer.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()
