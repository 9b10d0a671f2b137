"""``python -m detrlab.convert`` imports a training repository's EMA weights when the file has them."""

from __future__ import annotations

import pytest
import torch

from detrlab.checkpoint import load_checkpoint
from detrlab.convert.__main__ import main as convert_main
from detrlab.convert.averaged_weights import select_model_state
from tests.unit.convert_fixtures import hf_to_original, make_hf_model, original_args


def _shifted(state: dict[str, torch.Tensor], amount: float) -> dict[str, torch.Tensor]:
    return {k: v + amount if v.is_floating_point() else v.clone() for k, v in state.items()}


@pytest.fixture(scope="module")
def original_detr():
    model = make_hf_model("detr")
    return hf_to_original(model.state_dict(), "detr"), original_args(model, "detr")


@pytest.mark.parametrize("layout", ["ema", "ema_model"])
def test_convert_prefers_the_ema_weights_and_says_so(layout, original_detr, tmp_path, capsys):
    raw, args = original_detr
    average = _shifted(raw, 0.01)
    if layout == "ema":  # RT-DETR: {'module': state_dict, 'updates': n}
        stored = {"module": average, "updates": 100}
    else:  # DINO: the state dict of a wrapper module, keys prefixed `module.`
        stored = {f"module.{k}": v for k, v in average.items()}
    torch.save({"model": raw, layout: stored, "args": args}, tmp_path / "with_ema.pth")
    torch.save({"model": average, "args": args}, tmp_path / "average_only.pth")

    assert convert_main([str(tmp_path / "with_ema.pth"), str(tmp_path / "with_ema.ckpt")]) == 0
    assert f"EMA weights ('{layout}')" in capsys.readouterr().out
    assert convert_main([str(tmp_path / "average_only.pth"), str(tmp_path / "average_only.ckpt")]) == 0
    converted = load_checkpoint(tmp_path / "with_ema.ckpt")["state_dict"]
    reference = load_checkpoint(tmp_path / "average_only.ckpt")["state_dict"]
    assert converted.keys() == reference.keys()
    assert all(torch.equal(converted[k], reference[k]) for k in reference)


def test_without_an_average_the_model_weights_are_used(original_detr):
    raw, _ = original_detr
    state, which = select_model_state({"model": raw, "ema": {"module": {}}})
    assert which == "weights ('model')" and state.keys() == raw.keys()
    assert (
        select_model_state({"model": raw, "ema": {"module": raw}}, use_averaged=False)[1]
        == "weights ('model')"
    )
    assert select_model_state({"optimizer": {}}) is None
