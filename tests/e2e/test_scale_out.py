"""Data-parallel training: loss normalisation across ranks, and a 2-process CPU DDP run of train.py."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
import yaml

from detrlab.builders import build_model
from tests.helpers import TINY_OVERRIDES, compose_config

REPO_ROOT = Path(__file__).resolve().parents[2]
WORLD_SIZE = 2
BATCH = 6  # three images per rank; not a tensor size of the tiny models, so slicing is unambiguous


def _slice(value, start: int, stop: int):
    """Images ``start:stop`` of a detector output (dicts and lists of batch-first tensors)."""
    if isinstance(value, dict):
        return {key: _slice(item, start, stop) for key, item in value.items()}
    if isinstance(value, list):
        return [_slice(item, start, stop) for item in value]
    if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == BATCH:
        return value[start:stop]
    return value


def _rank_losses(rank: int, init_file: str, criteria: dict, inputs: dict, result_dir: str) -> None:
    torch_dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        per_rank = BATCH // WORLD_SIZE
        start, stop = rank * per_rank, (rank + 1) * per_rank
        results = {}
        for name, criterion in criteria.items():
            outputs, targets = inputs[name]
            losses = criterion(_slice(outputs, start, stop), targets[start:stop])
            results[name] = {key: value.detach() for key, value in losses.items()}
        torch.save(results, Path(result_dir) / f"rank{rank}.pt")
    finally:
        torch_dist.destroy_process_group()


def _targets(generator: torch.Generator) -> list[dict]:
    # Unequal box counts per rank (rank 0: 1+4+3 boxes, rank 1: 0+2+1), including an empty image:
    # a per-rank normaliser would weight the two halves differently.
    targets = []
    for count in (1, 4, 3, 0, 2, 1):
        centers = torch.rand(count, 2, generator=generator) * 0.6 + 0.2
        sizes = torch.rand(count, 2, generator=generator) * 0.2 + 0.05
        targets.append(
            {
                "labels": torch.randint(0, 3, (count,), generator=generator),
                "boxes": torch.cat([centers, sizes], dim=1),
            }
        )
    return targets


def test_two_ranks_normalise_losses_like_one_process_on_the_same_data(tmp_path):
    """DDP averages the ranks' gradients, so mean(rank losses) must equal the 1-process loss.

    That holds when every term is a sum over boxes/queries divided by ``num_boxes`` averaged over
    ranks (DETR's all-reduce), which is checked here for DETR (L1, GIoU) and DETA (all terms,
    focal classification included). DETR's softmax cross-entropy is a weighted mean over the
    queries of each rank instead, equal only when the ranks' weights sum alike, as in DETR.
    """
    generator = torch.Generator().manual_seed(0)
    criteria, inputs = {}, {}
    for model in ("detr_small", "deta_small"):
        # DETA's assigners subsample positives/negatives at random when there are more than their
        # caps; caps above the candidate counts make the comparison deterministic.
        no_subsampling = (
            [
                "+model.criterion.assignment.stage1_assigner.samples_per_image=100000",
                "+model.criterion.assignment.stage2_assigner.positive_fraction=1.0",
            ]
            if model == "deta_small"
            else []
        )
        cfg = compose_config("train", [f"model={model}", *TINY_OVERRIDES, *no_subsampling], tmp_path)
        module = build_model(cfg.model).eval()
        with torch.no_grad():
            images = torch.randn(BATCH, 3, 64, 64, generator=generator)
            outputs = module.detector(images, torch.zeros(BATCH, 64, 64, dtype=torch.bool))
        criteria[model] = module.criterion
        inputs[model] = (outputs, _targets(generator))

    mp.spawn(
        _rank_losses,
        args=(str(tmp_path / "init"), criteria, inputs, str(tmp_path)),
        nprocs=WORLD_SIZE,
        join=True,
    )
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]

    for model, criterion in criteria.items():
        outputs, targets = inputs[model]
        single = criterion(outputs, targets)
        if model == "detr_small":
            keys = [k for k in single if k.startswith(("loss_bbox", "loss_giou"))]
        else:
            keys = [k for k in single if k.startswith("loss")]
        assert len(keys) >= 4, keys
        for key in keys:
            mean_over_ranks = sum(rank[model][key] for rank in ranks) / WORLD_SIZE
            torch.testing.assert_close(
                mean_over_ranks, single[key], rtol=1e-5, atol=1e-6, msg=f"{model} {key}"
            )
            # and a per-rank normaliser (local box count) would not match:
        local = [sum(len(t["labels"]) for t in targets[r * 3 : (r + 1) * 3]) for r in range(WORLD_SIZE)]
        assert local[0] != local[1]


def test_two_process_cpu_ddp_run_trains_and_evaluates(tmp_path, synthetic_data_dir):
    command = [
        sys.executable,
        "train.py",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        *TINY_OVERRIDES,
        f"paths.data_dir={synthetic_data_dir}",
        f"paths.log_dir={tmp_path}",
        "run_name=ddp",
        "task_name=ddp_test",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "distributed_backend=gloo" in output
    assert "MEMBER: 2/2" in output

    # One run folder for both ranks (Lightning re-runs the script inside rank 0's folder).
    runs = tmp_path / "ddp_test" / "runs"
    assert [p.name for p in runs.iterdir()] == ["ddp"]
    run_dir = runs / "ddp"

    # Sharded sampling: 16 images / 2 ranks / batch 4 = 2 steps per epoch (1 process: 4).
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 2
    assert len(last["detrlab_rng_states"]) == 2  # one RNG state per rank for exact resume

    with (run_dir / "csv" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    val_ap = [float(row["val/AP"]) for row in rows if row.get("val/AP")]
    assert len(val_ap) == 1 and 0.0 <= val_ap[0] <= 1.0

    hparams = yaml.safe_load((run_dir / "csv" / "hparams.yaml").read_text())
    assert hparams["run"]["world_size"] == 2
    assert hparams["run"]["effective_batch_size"] == 8
