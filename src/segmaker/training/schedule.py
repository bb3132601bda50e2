"""Learning-rate schedules, computed per iteration from the global iteration number.

The loop sets the trainer's learning rate from `LearningRateSchedule.at(iteration)` before every step,
so the schedule is a pure function of one integer: resuming from a checkpoint at epoch k only needs
k * iterations_per_epoch, and MXNet's own schedulers (which count per-parameter updates, a number that
depends on the device count) stay out of it.
"""

import math
from dataclasses import dataclass
from typing import Tuple

from segmaker.config import TrainingConfig
from segmaker.errors import UserError

POLY_POWER = 0.9
SCHEDULERS = ("poly", "cosine", "step")


@dataclass(frozen=True)
class LearningRateSchedule:
    """Linear warm-up over `warmup_iterations`, then poly / cosine decay to 0 or a step schedule."""

    base_lr: float
    kind: str
    total_iterations: int
    warmup_iterations: int = 0
    step_iterations: Tuple[int, ...] = ()
    step_factor: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULERS:
            raise UserError(
                "lr_scheduler must be one of {}, not {!r}".format(", ".join(SCHEDULERS), self.kind)
            )
        if self.total_iterations < 1:
            raise UserError(
                "training would run no iteration: check epochs, mini_batch_size and the data size"
            )

    def at(self, iteration: int) -> float:
        """The learning rate for 0-based `iteration`."""
        if iteration < self.warmup_iterations:
            # (i + 1) so that the very first step does not run at a learning rate of exactly 0.
            return self.base_lr * (iteration + 1) / self.warmup_iterations
        if self.kind == "step":
            steps_taken = sum(1 for boundary in self.step_iterations if iteration >= boundary)
            return self.base_lr * self.step_factor**steps_taken
        progress = self._decay_progress(iteration)
        if self.kind == "poly":
            return self.base_lr * (1.0 - progress) ** POLY_POWER
        return self.base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))

    def _decay_progress(self, iteration: int) -> float:
        """Fraction (0..1) of the post-warm-up iterations already done."""
        decay_length = max(1, self.total_iterations - self.warmup_iterations)
        return min(1.0, (iteration - self.warmup_iterations) / decay_length)


def schedule_for(config: TrainingConfig, iterations_per_epoch: int) -> LearningRateSchedule:
    """The schedule a `TrainingConfig` asks for, with epochs turned into iterations."""
    return LearningRateSchedule(
        base_lr=config.learning_rate,
        kind=config.lr_scheduler,
        total_iterations=config.epochs * iterations_per_epoch,
        warmup_iterations=config.warmup_epochs * iterations_per_epoch,
        step_iterations=tuple(epoch * iterations_per_epoch for epoch in config.lr_scheduler_step),
        step_factor=config.lr_scheduler_factor,
    )
