"""The host-sync counter, and the sync budget of a DETA training step and inference forward."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torchvision.ops import nms

from detrlab.utils.host_sync import HostSyncCounter, values_are_free

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _count(fn) -> HostSyncCounter:
    with HostSyncCounter() as counter:
        fn()
    return counter


@pytest.mark.parametrize(
    ("name", "fn", "op"),
    [
        ("item", lambda x, m: x.sum().item(), "aten::_local_scalar_dense"),
        ("bool", lambda x, m: bool(x.sum() > 0), "aten::_local_scalar_dense"),
        ("int", lambda x, m: int(x.argmax()), "aten::_local_scalar_dense"),
        ("nonzero", lambda x, m: m.nonzero(), "aten::nonzero"),
        ("unique", lambda x, m: x.round().unique(), "aten::_unique2"),
        ("masked_select", lambda x, m: x.masked_select(m), "aten::masked_select"),
        ("bool index", lambda x, m: x[m], "aten::index"),
        ("bool index put", lambda x, m: x.clone().__setitem__(m, x[0]), "aten::index_put_"),
        (
            "repeat_interleave",
            lambda x, m: torch.arange(4).repeat_interleave(torch.tensor([1, 2, 0, 3])),
            None,
        ),
    ],
)
def test_counter_records_each_syncing_op(name, fn, op):
    x, m = torch.randn(4), torch.tensor([True, False, True, True])
    counter = _count(lambda: fn(x, m))
    assert counter.total >= 1, name
    if op is not None:
        assert counter.by_op()[op] >= 1, counter.by_op()
    assert all(event.site.startswith("test_host_syncs.py:") for event in counter.events)


def test_counter_records_torchvision_nms():
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.9], [2.0, 2.0, 3.0, 3.0]])
    counter = _count(lambda: nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5))
    assert counter.by_op() == {"torchvision::nms": 1}


def test_counter_ignores_sync_free_ops():
    x, m = torch.randn(4, 3), torch.tensor([True, False, True, True])

    def work():
        y = x.masked_fill(~m[:, None], 0.0).topk(2, dim=0).indices  # fixed-size mask + topk
        x[torch.tensor([0, 2])].sum(0).softmax(0)  # integer indexing
        torch.where(m, 1, 0).cumsum(0)
        torch.arange(4).repeat_interleave(torch.tensor([1, 2, 0, 3]), output_size=6)
        return y

    assert _count(work).total == 0


def test_counter_skips_host_side_optimizer_state():
    # torch.optim keeps `step` on the host unless capturable: its .item() reads cost no device sync
    p = torch.nn.Parameter(torch.randn(3))
    optimizer = torch.optim.AdamW([p], foreach=False)
    p.grad = torch.randn(3)
    assert _count(optimizer.step).total == 0


def test_values_are_free_on_cpu_except_under_the_counter():
    t = torch.zeros(2)
    assert values_are_free(t)
    with HostSyncCounter():
        assert not values_are_free(t)
    assert values_are_free(t)


def test_report_lists_ops_and_sites():
    counter = _count(lambda: torch.tensor([1, 0, 1]).nonzero())
    report = counter.report("demo")
    assert (
        report.startswith("demo: 1 host syncs")
        and "aten::nonzero" in report
        and "test_host_syncs.py" in report
    )


#: Syncs of one training step of deta_small (two-stage, NMS proposals, both IoU assigners, batch 2):
#: one nms for all images and levels, one nonzero per image and assigner (the assignment's length),
#: the criterion's label check and the non-finite-loss check that decides whether to skip the step.
TRAIN_BUDGET = {"torchvision::nms": 1, "aten::nonzero": 4, "aten::_local_scalar_dense": 1}
INFER_BUDGET = {"torchvision::nms": 1}


def test_deta_step_stays_within_the_sync_budget():
    sys.path.insert(0, str(BENCHMARKS))
    from host_syncs import build_small, count_syncs, make_batch

    torch.manual_seed(0)
    detector, criterion = build_small(
        [
            "model.detector.num_encoder_layers=1",
            "model.detector.num_decoder_layers=2",
            "model.detector.hidden_dim=64",
            "model.detector.dim_feedforward=128",
        ]
    )
    images, mask, targets = make_batch(2, 128, 160, criterion.num_classes)
    counters = count_syncs(detector, criterion, images, mask, targets)
    for name, budget in (("train", TRAIN_BUDGET), ("infer", INFER_BUDGET)):
        by_op = counters[name].by_op()
        over = {op: n for op, n in by_op.items() if n > budget.get(op, 0)}
        assert not over, f"{name}: syncs over budget {over}\n{counters[name].report(name)}"
    # the code paths the budget is about ran: the NMS proposals and both assigners
    assert counters["train"].by_op()["torchvision::nms"] == 1
    assert any("topk_per_target" in event.site for event in counters["train"].events)
