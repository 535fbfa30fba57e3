"""Fine-tuning settings: checked where they are made; the same command, the same run."""

from __future__ import annotations

import pytest

from segpipe.cli import build_parser
from segpipe.train.config import FinetuneConfig
from segpipe.train.progress import eta_seconds, format_line


def test_bad_settings_name_their_flag():
    with pytest.raises(ValueError, match="--epochs"):
        FinetuneConfig(train="t", base_model="m", out="o", epochs=0)
    with pytest.raises(ValueError, match="--lr"):
        FinetuneConfig(train="t", base_model="m", out="o", lr=2.0)
    with pytest.raises(ValueError, match="--max-minutes"):
        FinetuneConfig(train="t", base_model="m", out="o", max_minutes=0)


def test_the_same_command_gives_the_same_run_name_and_another_setting_another():
    args = build_parser().parse_args(["finetune", "data", "--base-model", "builtin:demo",
                                      "--out", "m", "--epochs", "3", "--no-progress"])
    values = {k: v for k, v in vars(args).items() if k not in ("command", "func", "verbose")}
    values["storage_options"] = {}
    first = FinetuneConfig(**values)
    assert FinetuneConfig(**values).run_name() == first.run_name()
    assert FinetuneConfig(**(values | {"progress": True})).run_name() == first.run_name()
    assert FinetuneConfig(**(values | {"lr": 1e-3})).run_name() != first.run_name()


def test_the_progress_line_shows_epochs_steps_per_second_loss_and_eta():
    line = format_line({"epoch": 2, "epochs": 5, "step": 7, "steps": 10, "loss": 1.5,
                        "steps_per_s": 2.0, "eta_s": 75})
    assert line == "epoch 2/5  step 7/10  2.00 steps/s  loss 1.500  ETA 1:15"
    assert eta_seconds(10, 50, 2.0, 100.0, budget_s=None) == 20.0
    assert eta_seconds(10, 50, 2.0, 100.0, budget_s=110.0) == 10.0
