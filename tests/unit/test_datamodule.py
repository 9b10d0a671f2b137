"""Tests for the data modules (detrlab.data.datamodule) and the grouped batch sampler."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from detrlab.data.collate import Batch
from detrlab.data.datamodule import CocoDataModule, SyntheticDataModule
from detrlab.data.samplers import GroupedBatchSampler, aspect_ratio_groups

TINY = {"num_train": 8, "num_val": 4, "image_size": 64, "seed": 1}


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic") / "shapes"
    SyntheticDataModule(root=root, **TINY).prepare_data()
    return root


def _module(root, **kwargs):
    return SyntheticDataModule(root=root, **TINY, **{"batch_size": 4, "num_workers": 0, **kwargs})


def _check_batch(batch, batch_size, num_classes=3):
    assert isinstance(batch, Batch) and len(batch) == batch_size
    b, c, h, w = batch.images.shape
    assert (b, c) == (batch_size, 3) and batch.images.dtype == torch.float32
    assert batch.mask.shape == (b, h, w) and batch.mask.dtype == torch.bool
    for i, target in enumerate(batch.targets):
        ih, iw = target["size"].tolist()
        assert not batch.mask[i, :ih, :iw].any()  # real pixels
        assert batch.mask[i].sum() == h * w - ih * iw  # everything else is padding
        assert target["orig_size"].tolist() == [64, 64]
        assert target["boxes"].dtype == torch.float32 and target["boxes"].shape[1] == 4
        assert ((target["boxes"] >= 0) & (target["boxes"] <= 1)).all()
        assert target["labels"].dtype == torch.int64
        assert ((target["labels"] >= 0) & (target["labels"] < num_classes)).all()


def test_setup_and_one_batch_each(synthetic_root):
    dm = _module(synthetic_root)
    dm.setup("fit")
    assert len(dm.train_dataset) == 8 and len(dm.val_dataset) == 4
    assert dm.num_classes == 3
    assert dm.class_names == ["circle", "square", "triangle"]
    assert dm.label_to_category_id == [1, 2, 3]
    _check_batch(next(iter(dm.train_dataloader())), 4)
    val_batch = next(iter(dm.val_dataloader()))
    _check_batch(val_batch, 4)
    # eval resizes the 64 px images to eval_size = image_size: no change, no padding
    assert val_batch.images.shape[-2:] == (64, 64) and not val_batch.mask.any()
    assert [t["image_id"].item() for t in val_batch.targets] == [1, 2, 3, 4]


def test_validate_stage_builds_only_val(synthetic_root):
    dm = _module(synthetic_root)
    dm.setup("validate")
    assert len(dm.val_dataset) == 4
    with pytest.raises(RuntimeError, match="setup"):
        _ = dm.train_dataset


def test_properties_available_before_setup(synthetic_root):
    dm = _module(synthetic_root)
    assert dm.num_classes == 3 and dm.class_names[0] == "circle"


def test_num_classes_mismatch_names_the_fix(synthetic_root):
    dm = _module(synthetic_root, num_classes=80)
    with pytest.raises(ValueError, match=r"data\.num_classes=3"):
        dm.setup("fit")


def test_loader_settings(synthetic_root):
    dm = _module(synthetic_root, val_batch_size=3, persistent_workers=True)
    dm.setup("fit")
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert isinstance(train.sampler, RandomSampler) and not train.drop_last
    assert isinstance(val.sampler, SequentialSampler) and val.batch_size == 3
    assert not train.persistent_workers  # no workers: nothing to keep alive
    assert [len(b) for b in val] == [3, 1]


def test_synthetic_defaults_scale_with_image_size(tmp_path):
    dm = SyntheticDataModule(root=tmp_path, image_size=256)
    assert dm.train_scales == [192, 224, 256, 288, 320]
    assert dm.crop_scales == [128, 160, 192] and dm.crop_size == (123, 192)
    assert dm.eval_size == 256 and dm.max_size == dm.eval_max_size == 427
    assert (
        dm.train_images == tmp_path / "train" and dm.val_annotations == tmp_path / "annotations" / "val.json"
    )
    assert SyntheticDataModule(root=tmp_path, train_scales=[100]).train_scales == [100]


def test_coco_layout_under_root(tmp_path):
    dm = CocoDataModule(root=tmp_path, val_annotations=tmp_path / "mine.json")
    assert dm.train_images == tmp_path / "train2017" and dm.val_images == tmp_path / "val2017"
    assert dm.train_annotations == tmp_path / "annotations" / "instances_train2017.json"
    assert dm.val_annotations == tmp_path / "mine.json"  # explicit paths win
    with pytest.raises(ValueError, match=r"data\.train_images"):
        CocoDataModule()


def test_eval_size_equal_to_max_size(synthetic_root):
    # square images evaluated at their own size with the longer side capped at the same value
    dm = _module(synthetic_root, eval_size=64, eval_max_size=64, train_scales=[64], max_size=64)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert batch.images.shape[-2:] == (64, 64)
    _check_batch(next(iter(dm.train_dataloader())), 4)


def test_missing_data_error_names_path(tmp_path):
    dm = CocoDataModule(tmp_path / "tr", tmp_path / "tr.json", tmp_path / "va", tmp_path / "va.json")
    with pytest.raises(FileNotFoundError, match=r"va\.json"):
        dm.setup("fit")


def test_grouped_loader_from_datamodule(synthetic_root):
    dm = _module(synthetic_root, aspect_ratio_grouping=True, batch_size=3)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader.batch_sampler, GroupedBatchSampler)
    batches = list(loader)
    assert [len(b) for b in batches] == [3, 3, 2]
    ids = sorted(t["image_id"].item() for b in batches for t in b.targets)
    assert ids == list(range(1, 9))


def test_aspect_ratio_groups():
    assert aspect_ratio_groups([1.5, 0.5, 1.0, 0.99]) == [0, 1, 0, 1]


GROUPS = [0, 1, 0, 0, 1, 1, 0, 1, 1, 0, 0, 1, 1]  # 6 landscape, 7 portrait


def test_grouped_batch_sampler_groups_and_covers_everything():
    sampler = GroupedBatchSampler(SequentialSampler(range(13)), GROUPS, batch_size=3)
    batches = list(sampler)
    # full batches are single-group, emitted in the order they fill up
    assert batches[:4] == [[0, 2, 3], [1, 4, 5], [6, 9, 10], [7, 8, 11]]
    assert batches[4:] == [[12]]  # leftovers of both groups
    assert len(sampler) == len(batches) == 5
    assert sorted(i for b in batches for i in b) == list(range(13))


def test_grouped_batch_sampler_leftovers_and_drop_last():
    groups = [0, 1, 0, 1, 0, 1, 1]  # 3 + 4
    kept = list(GroupedBatchSampler(SequentialSampler(range(7)), groups, batch_size=2))
    assert kept == [[0, 2], [1, 3], [5, 6], [4]]
    dropped = GroupedBatchSampler(SequentialSampler(range(7)), groups, batch_size=2, drop_last=True)
    assert list(dropped) == [[0, 2], [1, 3], [5, 6]] and len(dropped) == 3
    # mixed leftovers: 5 landscape + 5 portrait with batch 4 -> one full batch per group, then 1 + 1 mixed
    groups = [0] * 5 + [1] * 5
    batches = list(GroupedBatchSampler(SequentialSampler(range(10)), groups, batch_size=4))
    assert batches == [[0, 1, 2, 3], [5, 6, 7, 8], [4, 9]]


def test_grouped_batch_sampler_with_random_sampler():
    generator = torch.Generator().manual_seed(0)
    sampler = GroupedBatchSampler(RandomSampler(range(13), generator=generator), GROUPS, batch_size=2)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 7
    assert sorted(i for b in batches for i in b) == list(range(13))
    single_group = [b for b in batches if len({GROUPS[i] for i in b}) == 1]
    assert len(single_group) >= 6  # at most one mixed leftover batch


def test_grouped_batch_sampler_distributed_ranks_agree():
    per_rank = []
    for rank in range(2):
        dist = DistributedSampler(range(13), num_replicas=2, rank=rank, shuffle=True, seed=0)
        sampler = GroupedBatchSampler(dist, GROUPS, batch_size=2)
        sampler.set_epoch(3)
        assert dist.epoch == 3  # forwarded
        per_rank.append(list(sampler))
    # same number of steps on every rank, whatever the group sizes each rank got
    assert len(per_rank[0]) == len(per_rank[1]) == 4
    seen = [i for batches in per_rank for b in batches for i in b]
    assert set(seen) == set(range(13))


def test_lightning_can_inject_a_distributed_sampler(synthetic_root):
    # Lightning re-creates a BatchSampler subclass made inside the dataloader hook with a DistributedSampler;
    # this replays that path (internal helpers of Lightning) with 2 simulated ranks.
    from lightning.fabric.utilities.data import _replace_dunder_methods
    from lightning.pytorch.utilities.data import _update_dataloader

    dm = _module(synthetic_root, aspect_ratio_grouping=True, batch_size=2)
    dm.setup("fit")
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
        loader = dm.train_dataloader()
    dist = DistributedSampler(dm.train_dataset, num_replicas=2, rank=1, shuffle=True)
    updated = _update_dataloader(loader, dist)
    assert isinstance(updated.batch_sampler, GroupedBatchSampler)
    assert updated.batch_sampler.sampler is dist
    assert updated.batch_sampler.group_ids == loader.batch_sampler.group_ids
    assert len(list(updated.batch_sampler)) == 2  # 4 of 8 images on this rank, batch 2


class _Probe(L.LightningModule):
    """Checks what the trainer hands to the model; learns nothing."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen = []

    def training_step(self, batch, batch_idx):
        self.seen.append(("train", type(batch), batch.images.shape[0]))
        return (self.weight * batch.images.mean()).sum()

    def validation_step(self, batch, batch_idx):
        self.seen.append(("val", type(batch), batch.images.shape[0]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_fit_with_synthetic_datamodule(tmp_path):
    dm = SyntheticDataModule(root=tmp_path / "shapes", **TINY, batch_size=4, num_workers=0)
    model = _Probe()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    assert (tmp_path / "shapes" / "recipe.json").is_file()  # prepare_data generated the data
    assert model.seen == [("train", Batch, 4), ("val", Batch, 4)]
