"""Per-rank seeding for data-parallel runs."""

from __future__ import annotations

import logging
import random

import lightning as L
import numpy as np
import torch

log = logging.getLogger(__name__)


class PerRankSeed(L.Callback):
    """Re-seed each process with ``seed + global_rank`` once the ranks are known.

    ``seed_everything(seed)`` runs before the model is built, identically on every rank, so the
    initial weights agree and Lightning's ``DistributedSampler`` (seeded from the same global seed)
    splits one shared permutation into disjoint shards. After that, ranks must draw *different*
    random numbers: with one seed everywhere, rank 1 would flip, scale and crop its images exactly
    as rank 0 does and use the same dropout masks, which correlates the shards' augmentations.
    This callback re-seeds Python, NumPy and torch with ``seed + rank`` in ``setup`` (after the
    process group exists, before any data is drawn). Rank 0 keeps ``seed``; data-loader workers are
    seeded by Lightning from the process seed, the worker id and the rank.

    Args:
        seed: the run's seed (``cfg.seed``); ``None`` leaves the processes unseeded.
    """

    def __init__(self, seed: int | None) -> None:
        self.seed = None if seed is None else int(seed)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.seed is None:
            return
        rank_seed = self.seed + trainer.global_rank
        random.seed(rank_seed)
        np.random.seed(rank_seed % 2**32)
        torch.manual_seed(rank_seed)
        if trainer.world_size > 1:
            log.info("Rank %d seeded with %d (seed + rank)", trainer.global_rank, rank_seed)
