"""Checkpoints for spot training: one directory per save, written atomically, the last 2 kept.

Training saves one at the end of every epoch and one when it is asked to stop (SIGTERM) unless that state
is already saved; a stop can come in the middle of an epoch or of its validation: a checkpoint records how
many iterations are done, and a resumed run trains the batches the interrupted epoch still lacks (the same
global batches it would have trained: `data.order`), then validates it.

A checkpoint is a directory `checkpoint-<fingerprint>-iter-<NNNNNNNNN>/` holding the network parameters,
the optimizer states, the best parameters so far and `state.json` (iterations done, early-stopping counters,
metric history, the hyperparameters, the data seed, Python's and numpy's generator states, under float16 the
dynamic loss scaler's state, and the size of every file). It is assembled under a temporary name, every file
fsync'ed, then renamed into place (`files.staged_directory`), so a reader never sees half a checkpoint on
this disk. SageMaker syncs the folder to S3 file by file, so a restored folder can still be incomplete: a
checkpoint only counts when `state.json` exists and every file it lists has the recorded size.

The fingerprint is a hash of the resolved hyperparameters. Resuming needs the same hyperparameters; a
checkpoint written with others is logged, left alone (never rotated away), and training starts fresh:
re-using a checkpoint location with changed settings should not destroy the earlier job's checkpoints,
and failing would block a user who changed settings on purpose.
"""

import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional

from segmaker.files import staged_directory
from segmaker.models import load_parameters
from segmaker.outputs import History
from segmaker.training import rng
from segmaker.training.early_stopping import EarlyStoppingState
from segmaker.training.epoch import EpochStats
from segmaker.training.precision import LossScalerState, loss_scaler_state, restore_loss_scaler

log = logging.getLogger(__name__)

PARAMS_FILE = "net.params"
TRAINER_FILE = "trainer.states"
BEST_PARAMS_FILE = "best.params"
STATE_FILE = "state.json"
NAME_PREFIX = "checkpoint-"
KEEP = 2


@dataclass(frozen=True)
class TrainingState:
    """Everything besides the parameter files that training needs to resume after `completed_iterations`.

    `history` holds one record per finished epoch, so the epoch in progress is `len(history)`;
    `partial_epoch` is what that epoch measured so far (a stop can interrupt it).
    """

    completed_iterations: int
    early_stopping: EarlyStoppingState
    history: History
    hyperparameters: dict
    partial_epoch: EpochStats = EpochStats()
    data_seed: Optional[int] = None  # the run's data order and augmentation seed (drawn when `seed` is unset)

    def to_json_dict(self) -> dict:
        return {
            "completed_iterations": self.completed_iterations,
            "early_stopping": asdict(self.early_stopping),
            "history": self.history.to_rows(),
            "hyperparameters": self.hyperparameters,
            "partial_epoch": asdict(self.partial_epoch),
            "data_seed": self.data_seed,
        }

    @classmethod
    def from_json_dict(cls, raw: dict) -> "TrainingState":
        return cls(
            completed_iterations=int(raw["completed_iterations"]),
            early_stopping=EarlyStoppingState(**raw["early_stopping"]),
            history=History.from_rows(raw["history"]),
            hyperparameters=raw["hyperparameters"],
            partial_epoch=EpochStats(**raw["partial_epoch"]),
            data_seed=raw.get("data_seed"),
        )


@dataclass(frozen=True)
class Checkpoint:
    directory: Path
    state: TrainingState
    rng_states: Optional[dict] = None  # Python's and numpy's generators when it was written (training.rng)
    loss_scaler: Optional[LossScalerState] = None  # float16 only; absent from checkpoints written before

    @property
    def params_file(self) -> Path:
        return self.directory / PARAMS_FILE

    @property
    def trainer_file(self) -> Path:
        return self.directory / TRAINER_FILE

    @property
    def best_params_file(self) -> Path:
        return self.directory / BEST_PARAMS_FILE


def fingerprint(hyperparameters: dict) -> str:
    canonical = json.dumps(hyperparameters, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


class CheckpointStore:
    """Writes, finds and rotates the checkpoints of one training configuration in `directory`."""

    def __init__(self, directory: Path, hyperparameters: dict, keep: int = KEEP):
        self.directory = Path(directory)
        self.hyperparameters = hyperparameters
        self.keep = keep
        self._prefix = f"{NAME_PREFIX}{fingerprint(hyperparameters)}-iter-"

    def save(
        self,
        state: TrainingState,
        net,
        trainer,
        best_params: Optional[Path],
        rng_states: Optional[dict] = None,
    ) -> Path:
        """Write the checkpoint for `state` atomically, then drop all but the newest `keep`."""
        final = self.directory / f"{self._prefix}{state.completed_iterations:09d}"
        with staged_directory(final) as temp:
            net.save_parameters(str(temp / PARAMS_FILE))
            trainer.save_states(str(temp / TRAINER_FILE))
            if best_params is not None and best_params.exists():
                shutil.copyfile(str(best_params), str(temp / BEST_PARAMS_FILE))
            _write_state(temp, state, rng_states, loss_scaler_state(trainer))
        self._rotate()
        return final

    def latest(self) -> Optional[Checkpoint]:
        """The newest complete checkpoint written with these hyperparameters, if any."""
        if not self.directory.is_dir():
            return None
        for candidate in reversed(self._own_checkpoint_dirs()):
            checkpoint = _read_complete(candidate)
            if checkpoint is None:
                log.warning("Ignoring incomplete checkpoint %s", candidate)
                continue
            return checkpoint
        self._report_foreign_checkpoints()
        return None

    def _own_checkpoint_dirs(self) -> List[Path]:
        # Zero-padded iteration counts make the name order the training order.
        return sorted(p for p in self.directory.iterdir() if p.is_dir() and p.name.startswith(self._prefix))

    def _rotate(self) -> None:
        for old in self._own_checkpoint_dirs()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def _report_foreign_checkpoints(self) -> None:
        for candidate in sorted(self.directory.glob(NAME_PREFIX + "*")):
            checkpoint = _read_complete(candidate)
            if checkpoint is None:
                continue
            changed = differing_keys(checkpoint.state.hyperparameters, self.hyperparameters)
            log.warning(
                "Not resuming from %s: it was written with other hyperparameters (%s); starting fresh "
                "and leaving it in place",
                candidate.name,
                ", ".join(changed),
            )


def differing_keys(old: Dict[str, object], new: Dict[str, object]) -> List[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def _write_state(
    directory: Path, state: TrainingState, rng_states: Optional[dict], loss_scaler: Optional[LossScalerState]
) -> None:
    sizes = {p.name: p.stat().st_size for p in directory.iterdir()}
    document = {"files": sizes, "state": state.to_json_dict(), "rng": rng_states}
    if loss_scaler is not None:
        document["loss_scaler"] = loss_scaler.to_json_dict()
    (directory / STATE_FILE).write_text(json.dumps(document, indent=1), encoding="utf-8")


def _read_complete(directory: Path) -> Optional[Checkpoint]:
    try:
        document = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
        for name, size in document["files"].items():
            if (directory / name).stat().st_size != size:
                return None
        state = TrainingState.from_json_dict(document["state"])
        scaler = document.get("loss_scaler")
        loss_scaler = None if scaler is None else LossScalerState.from_json_dict(scaler)
        return Checkpoint(directory, state, document.get("rng"), loss_scaler)
    except (OSError, ValueError, KeyError, TypeError):
        return None


class Checkpointing:
    """What the training loop asks of checkpoints: restore a run from one, and save each state once.

    Only the main worker writes (on several hosts every checkpoint folder syncs to the same S3 prefix).
    A state is written at most once: a stop right after an epoch's checkpoint writes nothing more.
    """

    def __init__(self, store: Optional[CheckpointStore], is_main: bool, net, trainer, best_params: Path):
        self.store, self.is_main = store, is_main
        self.net, self.trainer, self.best_params = net, trainer, best_params
        self._saved: Optional[TrainingState] = None

    def restore(self, checkpoint: Checkpoint, contexts) -> TrainingState:
        """Parameters, optimizer states (and float16's loss scale), best parameters and generator states of
        `checkpoint`."""
        load_parameters(self.net, checkpoint.params_file, ctx=contexts)
        self.trainer.load_states(str(checkpoint.trainer_file))
        restore_loss_scaler(self.trainer, checkpoint.loss_scaler)
        if checkpoint.best_params_file.exists():
            shutil.copyfile(str(checkpoint.best_params_file), str(self.best_params))
        if checkpoint.rng_states is not None:
            rng.restore(checkpoint.rng_states)
        state = checkpoint.state
        log.info(
            "Resuming from checkpoint %s: %d epochs done, %d iterations into epoch %d",
            checkpoint.directory,
            len(state.history),
            state.partial_epoch.iterations,
            len(state.history),
        )
        self._saved = state
        return state

    def save(self, state: TrainingState) -> None:
        if self.store is None or not self.is_main or state == self._saved:
            return
        best = self.best_params if self.best_params.exists() else None
        path = self.store.save(state, self.net, self.trainer, best, rng.capture())
        self._saved = state
        log.info("Checkpoint written: %s", path)
