"""Checkpoints for spot training: one directory per save, written atomically, the last 2 kept.

Training saves one at the end of every epoch and one when it is asked to stop (SIGTERM), which can be
in the middle of an epoch: a checkpoint records how many iterations are done, and a resumed run
finishes the interrupted epoch with the iterations it still lacks.

A checkpoint is a directory `checkpoint-<fingerprint>-iter-<NNNNNNNNN>/` holding the network parameters,
the optimizer states, the best parameters so far and `state.json` (iterations done, early-stopping counters,
metric history, the hyperparameters, and the size of every file). It is assembled under a temporary
name, every file fsync'ed, then renamed into place, so a reader never sees half a checkpoint on this
disk. SageMaker syncs the folder to S3 file by file, so a restored folder can still be incomplete: a
checkpoint only counts when `state.json` exists and every file it lists has the recorded size.

The fingerprint is a hash of the resolved hyperparameters. Resuming needs the same hyperparameters; a
checkpoint written with others is logged, left alone (never rotated away), and training starts fresh:
re-using a checkpoint location with changed settings should not destroy the earlier job's checkpoints,
and failing would block a user who changed settings on purpose.
"""

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from segmaker.training.early_stopping import EarlyStoppingState
from segmaker.training.epoch import EpochStats

log = logging.getLogger(__name__)

PARAMS_FILE = "net.params"
TRAINER_FILE = "trainer.states"
BEST_PARAMS_FILE = "best.params"
STATE_FILE = "state.json"
NAME_PREFIX = "checkpoint-"
TEMP_PREFIX = ".tmp-"
KEEP = 2


@dataclass(frozen=True)
class TrainingState:
    """Everything besides the parameter files that training needs to resume after `completed_iterations`.

    `history` holds one metrics row (a dict) per finished epoch, so the epoch in progress is
    `len(history)`; `partial_epoch` is what that epoch measured so far (a stop can interrupt it).
    """

    completed_iterations: int
    early_stopping: EarlyStoppingState
    history: Tuple[dict, ...]
    hyperparameters: dict
    partial_epoch: EpochStats = EpochStats()
    data_seed: Optional[int] = None  # the run's data order and augmentation seed (drawn when `seed` is unset)

    def to_json_dict(self) -> dict:
        return {
            "completed_iterations": self.completed_iterations,
            "early_stopping": asdict(self.early_stopping),
            "history": list(self.history),
            "hyperparameters": self.hyperparameters,
            "partial_epoch": asdict(self.partial_epoch),
            "data_seed": self.data_seed,
        }

    @classmethod
    def from_json_dict(cls, raw: dict) -> "TrainingState":
        return cls(
            completed_iterations=int(raw["completed_iterations"]),
            early_stopping=EarlyStoppingState(**raw["early_stopping"]),
            history=tuple(raw["history"]),
            hyperparameters=raw["hyperparameters"],
            partial_epoch=EpochStats(**raw["partial_epoch"]),
            data_seed=raw.get("data_seed"),
        )


@dataclass(frozen=True)
class Checkpoint:
    directory: Path
    state: TrainingState

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

    def save(self, state: TrainingState, net, trainer, best_params: Optional[Path]) -> Path:
        """Write the checkpoint for `state` atomically, then drop all but the newest `keep`."""
        final = self.directory / f"{self._prefix}{state.completed_iterations:09d}"
        temp = self.directory / f"{TEMP_PREFIX}{final.name}.{os.getpid()}"
        shutil.rmtree(temp, ignore_errors=True)
        temp.mkdir(parents=True)
        net.save_parameters(str(temp / PARAMS_FILE))
        trainer.save_states(str(temp / TRAINER_FILE))
        if best_params is not None and best_params.exists():
            shutil.copyfile(str(best_params), str(temp / BEST_PARAMS_FILE))
        _write_state(temp, state)
        _fsync_tree(temp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(str(temp), str(final))
        _fsync_dir(self.directory)
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


def _write_state(directory: Path, state: TrainingState) -> None:
    sizes = {p.name: p.stat().st_size for p in directory.iterdir()}
    document = {"files": sizes, "state": state.to_json_dict()}
    (directory / STATE_FILE).write_text(json.dumps(document, indent=1), encoding="utf-8")


def _read_complete(directory: Path) -> Optional[Checkpoint]:
    try:
        document = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
        for name, size in document["files"].items():
            if (directory / name).stat().st_size != size:
                return None
        return Checkpoint(directory, TrainingState.from_json_dict(document["state"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _fsync_tree(directory: Path) -> None:
    for path in directory.iterdir():
        with open(str(path), "rb") as handle:
            os.fsync(handle.fileno())
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(str(directory), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
