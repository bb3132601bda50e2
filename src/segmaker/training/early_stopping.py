"""Early stopping on validation mIOU, as the built-in algorithm's hyperparameters describe it.

- `early_stopping_tolerance`: an epoch whose mIOU improves on the best so far by a *relative* gain
  below the tolerance counts as "no gain" (a gain of exactly 0 never counts as one).
- `early_stopping_patience`: that many consecutive epochs without gain stop training ...
- `early_stopping_min_epochs`: ... but never before this many epochs have run.

The state is an immutable value so a checkpoint can store it and resume exactly.
"""

from dataclasses import dataclass, replace
from typing import Optional

from segmaker.config import TrainingConfig


@dataclass(frozen=True)
class EarlyStoppingRule:
    enabled: bool
    min_epochs: int
    patience: int
    tolerance: float

    @classmethod
    def from_config(cls, config: TrainingConfig) -> "EarlyStoppingRule":
        return cls(
            enabled=config.early_stopping,
            min_epochs=config.early_stopping_min_epochs,
            patience=config.early_stopping_patience,
            tolerance=config.early_stopping_tolerance,
        )


@dataclass(frozen=True)
class EarlyStoppingState:
    """What early stopping remembers between epochs; `best_epoch` is None before the first validation."""

    best_miou: float = 0.0
    best_epoch: Optional[int] = None
    epochs_without_gain: int = 0
    epochs_seen: int = 0

    def update(self, epoch: int, miou: float, rule: EarlyStoppingRule) -> "EarlyStoppingState":
        """The state after validating `epoch` with `miou`."""
        seen = self.epochs_seen + 1
        if self.best_epoch is None:
            return EarlyStoppingState(miou, epoch, 0, seen)
        is_new_best = miou > self.best_miou
        best_miou, best_epoch = (miou, epoch) if is_new_best else (self.best_miou, self.best_epoch)
        if _counts_as_gain(self.best_miou, miou, rule.tolerance):
            return EarlyStoppingState(best_miou, best_epoch, 0, seen)
        return replace(
            self,
            best_miou=best_miou,
            best_epoch=best_epoch,
            epochs_without_gain=self.epochs_without_gain + 1,
            epochs_seen=seen,
        )

    def should_stop(self, rule: EarlyStoppingRule) -> bool:
        return (
            rule.enabled and self.epochs_seen >= rule.min_epochs and self.epochs_without_gain >= rule.patience
        )

    def is_best(self, epoch: int) -> bool:
        return self.best_epoch == epoch


def _counts_as_gain(best: float, miou: float, tolerance: float) -> bool:
    if miou <= best:
        return False
    if best <= 0.0:
        # From a zero mIOU any improvement is infinitely large in relative terms.
        return True
    return (miou - best) / best >= tolerance
