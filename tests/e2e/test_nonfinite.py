"""Injected NaN losses and gradients: steps are skipped and counted; too many in a row stop the run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from detrlab import train
from detrlab.errors import NonFiniteLossError
from detrlab.losses.criterion import SetCriterion


def inject(monkeypatch, bad_steps: set[int], kind: str) -> dict:
    """Make training calls number ``bad_steps`` (1-based) of the default criterion non-finite.

    ``kind="loss"``: ``loss_giou`` (and so ``loss``) becomes NaN. ``kind="gradient"``: every loss
    term stays finite but a zero-valued ``sqrt(|x - x|)`` term makes the gradients NaN.
    """
    original = SetCriterion.forward
    calls = {"train": 0}

    def forward(self, outputs, targets):
        losses = original(self, outputs, targets)
        if not self.training:
            return losses
        calls["train"] += 1
        if calls["train"] in bad_steps:
            if kind == "loss":
                losses["loss_giou"] = losses["loss_giou"] * float("nan")
                losses["loss"] = losses["loss"] + losses["loss_giou"]
            else:
                boxes = outputs["pred_boxes"]
                losses["loss"] = losses["loss"] + (boxes - boxes.detach()).abs().sqrt().sum()
        return losses

    monkeypatch.setattr(SetCriterion, "forward", forward)
    return calls


def adam_steps(checkpoint: dict) -> int:
    """Optimizer steps taken, read from AdamW's per-parameter step counter."""
    state = checkpoint["optimizer_states"][0]["state"]
    return int(max(float(s["step"]) for s in state.values()))


@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_isolated_nonfinite_step_is_skipped_and_counted(tiny_train_cfg, monkeypatch, kind):
    # 16 images / batch 4 = 4 steps; step 2 is bad.
    calls = inject(monkeypatch, {2}, kind)
    metrics = train.run(tiny_train_cfg)
    assert calls["train"] == 4
    assert metrics["train/skipped_steps"] == 1.0
    last = torch.load(
        Path(tiny_train_cfg.paths.output_dir) / "checkpoints" / "last.ckpt",
        map_location="cpu",
        weights_only=False,
    )
    assert adam_steps(last) == 3  # the bad step changed nothing
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


def test_too_many_in_a_row_stop_with_the_checkpoint_kept(tiny_train_cfg, monkeypatch):
    with open_dict(tiny_train_cfg):
        tiny_train_cfg.callbacks.nonfinite_guard.max_consecutive_skips = 2
        tiny_train_cfg.trainer.max_epochs = 3
    inject(monkeypatch, set(range(3, 100)), "loss")
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss term\(s\) loss_giou") as info:
        train.run(tiny_train_cfg)
    path = Path(tiny_train_cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert str(path) in str(info.value)
    kept = torch.load(path, map_location="cpu", weights_only=False)
    assert adam_steps(kept) == 2  # steps 1 and 2 were good; 3 and 4 were skipped, then the stop
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values() if v.is_floating_point())
