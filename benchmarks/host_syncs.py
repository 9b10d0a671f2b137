"""Count the host syncs of one DETA training step and one inference forward, on the CPU.

Every operation that would make the host wait for an accelerator (scalar reads, ``nonzero``,
``unique``, boolean-mask indexing, ``nms``, ...; see :mod:`detrlab.utils.host_sync`) is recorded under
a ``TorchDispatchMode`` and printed per op kind and per call site. A step is what
``DetectionModule.training_step`` and Lightning's loop do: detector forward, criterion, the
non-finite check, backward and an AdamW step; it is counted after one uncounted warm-up step, so
one-time work (cached tables) stays out of the steady-state figure.

Usage::

    python benchmarks/host_syncs.py                 # DETA-R50 paper config, 512x640, batch 2
    python benchmarks/host_syncs.py --model deta_small        # any conf/model/<name>.yaml
    python benchmarks/host_syncs.py --model deformable_detr_r50 --override model.detector.two_stage=true
    python benchmarks/host_syncs.py --json out.json # also write the counts
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from detrlab.utils.finite import nonfinite_terms
from detrlab.utils.host_sync import HostSyncCounter

BENCHMARKS = Path(__file__).resolve().parent
CONFIG_DIR = BENCHMARKS.parent / "conf"


def build_r50():
    """DETA-R50 (paper config: 5 levels, 900 queries, two-stage, box refinement, both assigners)."""
    sys.path.insert(0, str(BENCHMARKS))
    from deta_vs_reference import build_models

    detector, criterion, reference = build_models()
    del reference
    return detector, criterion


def build_small(overrides: list[str] | None = None, model: str = "deta_small"):
    """``model=<model>`` (a ``conf/model`` name) as the training entry point builds it (random init)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from detrlab.builders import build_model

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}", *(overrides or [])])
    GlobalHydra.instance().clear()
    module = build_model(cfg.model)
    return module.detector, module.criterion


def make_batch(batch: int, height: int, width: int, num_classes: int, seed: int = 1):
    """Random images, a padding mask with a padded border on the second image, 8 boxes per image."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, height, width, generator=g)
    mask = torch.zeros(batch, height, width, dtype=torch.bool)
    if batch > 1:
        mask[1:, height - height // 8 :, :] = True  # padding: the code paths of mixed image sizes
        mask[1:, :, width - width // 8 :] = True
    targets = []
    for _ in range(batch):
        centres = torch.rand(8, 2, generator=g) * 0.6 + 0.2
        sizes = torch.rand(8, 2, generator=g) * 0.3 + 0.05
        targets.append(
            {
                "labels": torch.randint(0, num_classes, (8,), generator=g),
                "boxes": torch.cat([centres, sizes], 1),
            }
        )
    return images, mask, targets


def training_step(detector, criterion, optimizer, images, mask, targets) -> None:
    """Forward, losses, the per-step non-finite check, backward, optimizer step."""
    losses = criterion(detector(images, mask), targets)
    if nonfinite_terms(losses):
        return
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    optimizer.step()


def count_syncs(detector, criterion, images, mask, targets) -> dict[str, HostSyncCounter]:
    """``{"train": counter of one training step, "infer": counter of one inference forward}``."""
    optimizer = torch.optim.AdamW([p for p in detector.parameters() if p.requires_grad], lr=1e-6)
    detector.train()
    training_step(detector, criterion, optimizer, images, mask, targets)  # warm-up, not counted
    with HostSyncCounter() as train:
        training_step(detector, criterion, optimizer, images, mask, targets)
    detector.eval()
    with torch.no_grad():
        detector(images, mask)
        with HostSyncCounter() as infer:
            detector(images, mask)
    return {"train": train, "infer": infer}


def _num_classes(criterion) -> int:
    return int(getattr(criterion, "num_classes", 91))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default="r50", help="r50 (DETA paper config, as the reference) or a conf/model name"
    )
    parser.add_argument("--override", action="append", default=[], help="config override (repeatable)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write {train, infer: {total, by_op}} here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model == "r50":
        detector, criterion = build_r50()
    else:
        detector, criterion = build_small(args.override, model=args.model)
    images, mask, targets = make_batch(args.batch, args.height, args.width, _num_classes(criterion))
    counters = count_syncs(detector, criterion, images, mask, targets)
    what = f"{args.model} {args.height}x{args.width} batch {args.batch}"
    print(counters["train"].report(f"training step, {what}"))
    print(counters["infer"].report(f"inference forward, {what}"))
    if args.json:
        summary = {name: {"total": c.total, "by_op": dict(c.by_op())} for name, c in counters.items()}
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
