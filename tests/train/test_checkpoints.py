"""A checkpoint written by training restores the same weights and optimizer state, and its
training state reads on its own (no Ray)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from segpipe.model.loading import load_model
from segpipe.train.checkpoints import TrainState, read_checkpoint, read_state, write_checkpoint
from segpipe.train.labels import plan_labels


def trained_a_step(tiny_model: str) -> tuple[Any, torch.optim.Optimizer, Any]:
    """(loaded model, its optimizer after one step, its unchanged label plan)."""
    loaded = load_model(tiny_model, device="cpu")
    plan = plan_labels([c.to_coco() for c in loaded.label_set.categories], loaded.label_set,
                       loaded.model.config.num_labels)
    optimizer = torch.optim.AdamW(loaded.model.parameters(), lr=0.01)
    loaded.model.class_predictor.weight.sum().backward()
    optimizer.step()
    return loaded, optimizer, plan


def test_a_checkpoint_restores_weights_optimizer_and_state(tmp_path, tiny_model):
    loaded, optimizer, plan = trained_a_step(tiny_model)
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


def test_the_training_state_reads_without_the_optimizer_state(tmp_path, tiny_model):
    loaded, optimizer, plan = trained_a_step(tiny_model)
    state = TrainState(epoch=2, step=8, train_seconds=1.5, pq_before={"All": {"pq": 0.25}},
                       history=[{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": None}],
                       resumed_from_epoch=[1])
    write_checkpoint(str(tmp_path), loaded.model, loaded.processor, plan, optimizer, state)
    for tensors in Path(tmp_path).glob("*.pt"):  # the optimizer's state: only a resume needs it
        tensors.unlink()
    assert read_state(str(tmp_path)) == state


def test_a_checkpoint_of_the_earlier_one_file_layout_still_resumes(tmp_path, tiny_model):
    from dataclasses import asdict

    loaded, optimizer, plan = trained_a_step(tiny_model)
    state = TrainState(epoch=4, step=16, history=[{"epoch": 4}])
    write_checkpoint(str(tmp_path), loaded.model, loaded.processor, plan, optimizer, state)
    # As earlier versions wrote it: the optimizer and the state together in state.pt.
    for name in ("state.json", "optimizer.pt"):
        (tmp_path / name).unlink()
    torch.save({"optimizer": optimizer.state_dict(), "state": asdict(state)}, tmp_path / "state.pt")
    assert read_state(str(tmp_path)) == state
    fresh = load_model(tiny_model, device="cpu").model
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=0.01)
    assert read_checkpoint(str(tmp_path), fresh, fresh_optimizer) == state
    assert fresh_optimizer.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()
