"""Tests for padding / batching (detrlab.data.collate)."""

from __future__ import annotations

import functools

import pytest
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch.utils.data import DataLoader

from detrlab.data.collate import Batch, collate_detection


def _target(image_id, n):
    return {
        "boxes": torch.full((n, 4), 0.5),
        "labels": torch.arange(n, dtype=torch.int64),
        "image_id": torch.tensor(image_id),
        "orig_size": torch.tensor([10, 10]),
        "size": torch.tensor([4, 5]),
    }


def _samples():
    a = torch.arange(3 * 4 * 5, dtype=torch.float32).reshape(3, 4, 5) + 1  # all non-zero
    b = -torch.ones(3, 6, 3)
    return [(a, _target(1, 2)), (b, _target(2, 0))]


def test_shapes_padding_and_mask():
    samples = _samples()
    batch = collate_detection(samples)
    assert isinstance(batch, Batch)
    assert len(batch) == 2
    assert batch.images.shape == (2, 3, 6, 5)
    assert batch.mask.shape == (2, 6, 5) and batch.mask.dtype == torch.bool
    # image 0 is 4x5: rows 4..5 padded
    expected0 = torch.zeros(6, 5, dtype=torch.bool)
    expected0[4:, :] = True
    assert torch.equal(batch.mask[0], expected0)
    # image 1 is 6x3: columns 3..4 padded
    expected1 = torch.zeros(6, 5, dtype=torch.bool)
    expected1[:, 3:] = True
    assert torch.equal(batch.mask[1], expected1)
    # content copied, zeros exactly where the mask is True
    assert torch.equal(batch.images[0, :, :4, :5], samples[0][0])
    assert torch.equal(batch.images[1, :, :6, :3], samples[1][0])
    assert (batch.images.abs().sum(dim=1) == 0).eq(batch.mask).all()
    assert batch.targets[0]["image_id"].item() == 1 and batch.targets[1]["labels"].shape == (0,)


def test_size_divisibility():
    batch = collate_detection(_samples(), size_divisibility=4)
    assert batch.images.shape == (2, 3, 8, 8)
    assert batch.mask[0, :4, :5].logical_not().all()
    assert batch.mask[0].sum() == 8 * 8 - 4 * 5
    assert batch.mask[1].sum() == 8 * 8 - 6 * 3
    # already a multiple: unchanged
    assert collate_detection(_samples(), size_divisibility=3).images.shape == (2, 3, 6, 6)


def test_single_sample_has_no_padding():
    image = torch.rand(3, 7, 9)
    batch = collate_detection([(image, _target(3, 1))])
    assert batch.images.shape == (1, 3, 7, 9)
    assert not batch.mask.any()


def test_empty_input_raises():
    with pytest.raises(ValueError, match="empty"):
        collate_detection([])


def test_to_moves_targets_and_returns_batch():
    batch = collate_detection(_samples())
    moved = batch.to("cpu")
    assert isinstance(moved, Batch) and len(moved) == 2
    assert torch.equal(moved.images, batch.images)
    assert moved.targets[0]["labels"].tolist() == [0, 1]
    batch.targets[0]["note"] = "not a tensor"
    assert batch.to(torch.device("cpu")).targets[0]["note"] == "not a tensor"
    moved = batch.to("meta")  # a device different from the source: every tensor goes there
    assert moved.images.device.type == "meta" and moved.mask.device.type == "meta"
    assert all(v.device.type == "meta" for v in moved.targets[0].values() if isinstance(v, torch.Tensor))


def test_lightning_moves_batch_with_its_to_method():
    batch = collate_detection(_samples())
    moved = move_data_to_device(batch, torch.device("meta"))
    assert isinstance(moved, Batch)
    assert moved.images.device.type == "meta" and moved.targets[1]["boxes"].device.type == "meta"


def test_works_as_dataloader_collate_fn():
    samples = _samples() * 3
    loader = DataLoader(
        samples, batch_size=4, collate_fn=functools.partial(collate_detection, size_divisibility=2)
    )
    batches = list(loader)
    assert [len(b) for b in batches] == [4, 2]
    assert batches[0].images.shape == (4, 3, 6, 6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinning memory needs an accelerator")
def test_pin_memory():
    pinned = collate_detection(_samples()).pin_memory()
    assert pinned.images.is_pinned() and pinned.targets[0]["boxes"].is_pinned()
