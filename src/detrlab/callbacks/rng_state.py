"""Save every rank's random-number-generator state in checkpoints and restore it on resume.

Lightning restores the model, optimizers, schedulers and loop counters, but not the RNGs. Without
them a resumed run draws a different data order, different augmentations and different dropout
masks from the uninterrupted run, so "stop after epoch 1, resume" would not reproduce "train two
epochs". With this callback it does (exactly, on CPU with deterministic settings).
"""

from __future__ import annotations

import logging
import random
from typing import Any

import lightning as L
import numpy as np
import torch

from detrlab.utils import dist

log = logging.getLogger(__name__)

#: Key of the per-rank RNG states inside a Lightning checkpoint dict.
CHECKPOINT_RNG_KEY = "detrlab_rng_states"


def collect_rng_state() -> dict[str, Any]:
    """This process's RNG states: ``python``, ``numpy``, ``torch`` and (when initialised) ``cuda``."""
    # NumPy's key array is stored as a tensor: checkpoints must stay loadable with
    # torch.load(weights_only=True), which refuses NumPy arrays.
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def apply_rng_state(state: dict[str, Any]) -> None:
    """Set the RNGs from a dict made by :func:`collect_rng_state`."""
    random.setstate(state["python"])
    kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RNGStateInCheckpoint(L.Callback):
    """Stores ``[state of rank 0, state of rank 1, ...]`` in each checkpoint; resuming restores them.

    Saving gathers the states of all ranks (checkpoints are written by rank 0 but dumped on every
    rank, so the gather is a matching collective). The states are applied when Lightning restores
    the callbacks: after the ``setup`` hooks (so per-rank re-seeding does not overwrite them) and
    before the fit loop creates the first resumed epoch's data-loader iterator, whose creation
    already draws from the torch RNG. Nothing in between draws random numbers (the sanity check
    runs under ``isolate_rng``). A checkpoint written with another number of ranks restores
    nothing and says so.
    """

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[CHECKPOINT_RNG_KEY] = dist.all_gather_objects(collect_rng_state())

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        states = checkpoint.get(CHECKPOINT_RNG_KEY)
        if states is None:
            log.warning("The checkpoint holds no RNG states: the resumed run draws new random numbers.")
            return
        if len(states) != trainer.world_size:
            log.warning(
                "The checkpoint holds RNG states of %d processes but this run has %d: they are not "
                "restored, so data order and augmentations differ from an uninterrupted run.",
                len(states),
                trainer.world_size,
            )
            return
        apply_rng_state(states[trainer.global_rank])
