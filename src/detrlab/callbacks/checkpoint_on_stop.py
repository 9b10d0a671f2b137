"""Write a resumable ``last.ckpt`` when training is stopped from outside: Ctrl-C or SIGTERM.

Lightning turns Ctrl-C into ``KeyboardInterrupt`` wherever it lands, and SIGTERM (preemption,
``scancel``, requeue, ``kill``; rank 0 forwards it to the processes it launched) into a
``SIGTERMException`` at the next batch boundary on every rank; either way it calls the callbacks'
``on_exception`` hook before the process exits. The checkpoint goes where ``ckpt_path=last``
looks for it, so rerunning (or requeueing) the same command continues from the stopped step
instead of the last finished epoch. On SLURM, Lightning's own SIGUSR1 handler additionally
writes ``hpc_ckpt_N.ckpt`` and requeues the job.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)

#: The exceptions that mean "stopped from outside", with the words the log uses for them.
STOP_REASONS: dict[type[BaseException], str] = {KeyboardInterrupt: "Ctrl-C", SIGTERMException: "SIGTERM"}


def last_checkpoint_path(trainer: L.Trainer) -> str:
    """``<ModelCheckpoint dirpath>/last.ckpt``, or ``<default_root_dir>/checkpoints/last.ckpt``."""
    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint) and callback.dirpath:
        return os.path.join(callback.dirpath, callback.CHECKPOINT_NAME_LAST + callback.FILE_EXTENSION)
    return os.path.join(trainer.default_root_dir, "checkpoints", "last.ckpt")


def save_last_checkpoint(trainer: L.Trainer) -> Path:
    """Save the full training state (model, optimizer, schedulers, loop progress) as ``last.ckpt``.

    Call it on every rank: the strategy writes on rank 0 and synchronises the others.
    """
    path = Path(last_checkpoint_path(trainer))
    trainer.save_checkpoint(path)
    if trainer.is_global_zero:
        log.warning(
            "Saved the training state at epoch %d, step %d to %s; run the same command with "
            "ckpt_path=last (or ckpt_path=%s) to continue.",
            trainer.current_epoch,
            trainer.global_step,
            path,
            path,
        )
    return path


class CheckpointOnStop(Callback):
    """On Ctrl-C or SIGTERM during ``fit`` (not the sanity check), save ``last.ckpt`` before exiting.

    A Ctrl-C can land inside an optimizer step; the saved state is then the one at that moment
    (some parameters possibly already updated for the step), which is still finite and resumable.
    Other exceptions are not checkpointed: a crash's state is rarely one to continue from.
    """

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        reason = next((word for kind, word in STOP_REASONS.items() if isinstance(exception, kind)), None)
        if reason is None or trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
            return
        if trainer.is_global_zero:
            log.warning("Training stopped by %s.", reason)
        save_last_checkpoint(trainer)
