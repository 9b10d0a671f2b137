"""Skip optimizer steps with non-finite losses or gradients; stop after too many in a row.

The loss side is decided in :meth:`detrlab.module.DetectionModule.training_step`: a non-finite
``loss`` makes it return ``None``, which in Lightning's automatic optimization skips backward and
the optimizer step; the names of the bad terms are kept in ``module.nonfinite_terms``. This
callback adds the gradient side (after backward, before clipping and the step: non-finite
gradients are dropped, so the optimizer leaves every parameter and its state untouched), counts
skipped steps (logged as ``train/skipped_steps``), and after ``max_consecutive_skips`` skips in a
row saves ``last.ckpt`` (the weights of the last good step: skipped steps change nothing) and
stops the run with :class:`detrlab.errors.NonFiniteLossError` naming the bad terms.
"""

from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.callbacks import Callback
from torch.optim import Optimizer

from detrlab.callbacks.checkpoint_on_stop import save_last_checkpoint
from detrlab.errors import NonFiniteLossError
from detrlab.utils.finite import nonfinite_gradients

log = logging.getLogger(__name__)


class NonFiniteGuard(Callback):
    """Count and skip non-finite steps; stop after ``max_consecutive_skips`` of them in a row.

    Args:
        max_consecutive_skips: consecutive skipped steps that end the run (>= 1).
        check_gradients: also skip steps whose gradients are non-finite although the loss is finite.
    """

    def __init__(self, max_consecutive_skips: int = 5, check_gradients: bool = True) -> None:
        if max_consecutive_skips < 1:
            raise ValueError(f"max_consecutive_skips must be >= 1, got {max_consecutive_skips}")
        self.max_consecutive_skips = int(max_consecutive_skips)
        self.check_gradients = check_gradients
        self.skipped_steps = 0
        self.consecutive = 0
        self._bad_gradients: list[str] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._bad_gradients = []

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Optimizer
    ) -> None:
        if not self.check_gradients or pl_module.nonfinite_terms:
            return
        # Gradients are already averaged across ranks here, so every rank reaches the same decision.
        self._bad_gradients = nonfinite_gradients(pl_module)
        if self._bad_gradients:
            # Without gradients the optimizer skips every parameter (and its moments / step count);
            # clipping then has nothing to scale.
            optimizer.zero_grad(set_to_none=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bad_terms = list(pl_module.nonfinite_terms)
        if not bad_terms and not self._bad_gradients:
            self.consecutive = 0
        else:
            self.skipped_steps += 1
            self.consecutive += 1
            log.warning(
                "Step %d skipped (%d in a row, %d in total): %s",
                trainer.global_step,
                self.consecutive,
                self.skipped_steps,
                self._describe(bad_terms),
            )
        pl_module.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)
        if self.consecutive >= self.max_consecutive_skips:
            path = save_last_checkpoint(trainer)
            raise NonFiniteLossError(
                f"Training stopped after {self.consecutive} consecutive steps with non-finite values "
                f"({self._describe(bad_terms)}). The weights of the last good step are saved in {path}. "
                "Lower model.optim.lr, keep trainer.gradient_clip_val set, check the data for degenerate "
                "boxes, or raise callbacks.nonfinite_guard.max_consecutive_skips."
            )

    def _describe(self, bad_terms: list[str]) -> str:
        if bad_terms:
            return f"non-finite loss term(s) {', '.join(bad_terms)}"
        shown = ", ".join(self._bad_gradients[:3])
        more = f" and {len(self._bad_gradients) - 3} more" if len(self._bad_gradients) > 3 else ""
        return f"every loss term is finite but the gradients of {shown}{more} are not"

    def state_dict(self) -> dict:
        return {"skipped_steps": self.skipped_steps}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))
