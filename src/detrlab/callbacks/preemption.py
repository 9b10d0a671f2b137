"""Write a checkpoint when the process is asked to stop (SIGTERM: preemption, scancel, requeue)."""

from __future__ import annotations

import logging
import os

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class CheckpointOnPreemption(L.Callback):
    """On SIGTERM, save the current state as the run's ``last.ckpt`` before the process exits.

    Lightning turns SIGTERM into a ``SIGTERMException`` at the next batch boundary on every rank
    (rank 0 forwards the signal to the processes it launched). This callback catches it in
    ``on_exception`` and writes the checkpoint into the ``ModelCheckpoint`` folder under the name
    ``ckpt_path=last`` looks for, so rerunning (or requeueing) the same command with
    ``ckpt_path=last`` continues from the interrupted step instead of the last finished epoch.
    On SLURM, Lightning's own SIGUSR1 handler additionally writes ``hpc_ckpt_N.ckpt`` and requeues
    the job; this callback covers SIGTERM everywhere (SLURM, Kubernetes, ``kill``).

    Other exceptions are not checkpointed: a crash's state is rarely one to continue from.
    """

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.sanity_checking:
            return
        path = preemption_checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            log.warning(
                "Stopped by SIGTERM at epoch %d, step %d; checkpoint written to %s. "
                "Run the same command with ckpt_path=last to continue.",
                trainer.current_epoch,
                trainer.global_step,
                path,
            )


def preemption_checkpoint_path(trainer: L.Trainer) -> str:
    """``<ModelCheckpoint dirpath>/last.ckpt``, or ``<default_root_dir>/checkpoints/last.ckpt``."""
    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint) and callback.dirpath:
        return os.path.join(callback.dirpath, callback.CHECKPOINT_NAME_LAST + callback.FILE_EXTENSION)
    return os.path.join(trainer.default_root_dir, "checkpoints", "last.ckpt")
