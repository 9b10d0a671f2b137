"""Save a resumable checkpoint when training is interrupted with Ctrl-C.

Lightning turns Ctrl-C into ``KeyboardInterrupt`` wherever it lands and calls the callbacks'
``on_exception`` hook before the process exits; this callback writes ``last.ckpt`` there, so
``ckpt_path=<run>/checkpoints/last.ckpt`` (or ``ckpt_path=last``) continues from the interrupted
step. SIGTERM is handled by :class:`detrlab.callbacks.preemption.CheckpointOnPreemption`, which
writes the same file; :func:`save_last_checkpoint` is shared by both and by the non-finite guard.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn

from detrlab.callbacks.preemption import preemption_checkpoint_path

log = logging.getLogger(__name__)


def save_last_checkpoint(trainer: L.Trainer) -> Path:
    """Save the full training state (model, optimizer, schedulers, loop progress) as ``last.ckpt``.

    The file goes where ``ModelCheckpoint`` keeps ``last.ckpt`` (or ``<default_root_dir>/checkpoints``).
    Call it on every rank: the strategy writes on rank 0 and synchronises the others.
    """
    path = Path(preemption_checkpoint_path(trainer))
    trainer.save_checkpoint(path)
    if trainer.is_global_zero:
        log.warning("Saved the training state to %s (resume with ckpt_path=%s)", path, path)
    return path


class SaveOnInterrupt(Callback):
    """On Ctrl-C during ``fit`` (not during the sanity check), save ``last.ckpt`` before exiting.

    The interrupt can land inside an optimizer step; the saved state is then the one at that
    moment (some parameters possibly already updated for the step), which is still finite and
    resumable.
    """

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, KeyboardInterrupt):
            return
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
            return
        save_last_checkpoint(trainer)
