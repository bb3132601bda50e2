"""The data side of training: which samples, which label maps, and the loaders that turn them into batches."""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional

from segmaker.data import (
    BatchLoader,
    FileSample,
    LabelMap,
    WorkerPool,
    find_file_samples,
    has_split,
    iter_validation_samples,
    label_map_file,
    load_label_map,
    resolve_worker_count,
    shard,
)
from segmaker.data.loader import Batch, ValidationBatch
from segmaker.errors import UserError
from segmaker.transforms import train_transform

log = logging.getLogger(__name__)

LABEL_MAP_CHANNEL = "label_map"


@dataclass(frozen=True)
class TrainingData:
    """This worker's samples and the label maps that decode their masks."""

    train_samples: List[FileSample]
    validation_samples: Optional[List[FileSample]]
    train_label_map: LabelMap
    validation_label_map: LabelMap

    @property
    def has_validation(self) -> bool:
        return self.validation_samples is not None


def find_training_data(job, rank: int = 0, world_size: int = 1) -> TrainingData:
    """The File-mode samples of the job's channels (train is sharded by host, validation is not)."""
    _refuse_pipe_mode(job.channels)
    num_classes = job.config.num_classes
    label_dir = label_map_dir(job.paths)
    train = shard(find_file_samples(job.paths, "train"), rank, world_size)
    validation = find_file_samples(job.paths, "validation") if has_split(job.paths, "validation") else None
    return TrainingData(
        train_samples=train,
        validation_samples=validation,
        train_label_map=load_label_map(label_map_file(label_dir, "train"), num_classes),
        validation_label_map=load_label_map(label_map_file(label_dir, "validation"), num_classes),
    )


def label_map_dir(paths) -> Optional[Path]:
    folder = paths.channel_dir(LABEL_MAP_CHANNEL)
    return folder if folder.is_dir() else None


def _refuse_pipe_mode(channels) -> None:
    piped = sorted(name for name, channel in channels.items() if channel.is_pipe)
    if piped:
        raise UserError(
            f"channel(s) {', '.join(piped)} use Pipe mode, which this training build does not read yet;"
            " use File or FastFile mode"
        )


def iterations_per_epoch(num_training_samples: Optional[int], found: int, batch_size: int) -> int:
    """floor(num_training_samples / mini_batch_size) as in the built-in; the count defaults to the data's."""
    samples = num_training_samples if num_training_samples is not None else found
    if num_training_samples is not None and num_training_samples > found:
        log.warning(
            "num_training_samples is %d but the train channel holds %d samples; an epoch re-visits samples",
            num_training_samples,
            found,
        )
    iterations = samples // batch_size
    if iterations < 1:
        raise UserError(
            f"mini_batch_size {batch_size} is larger than the {samples} training samples: an epoch would"
            " run no iteration; lower mini_batch_size or add data"
        )
    return iterations


class DataFeed:
    """Worker processes that decode and augment; training batches per epoch and validation batches."""

    def __init__(self, config, data: TrainingData):
        self.config = config
        self.data = data
        self.pool = WorkerPool(resolve_worker_count(config.data_workers))
        self.loader = BatchLoader(
            train_transform(config.base_size, config.crop_size),
            data.train_label_map,
            config.mini_batch_size,
            pool=self.pool,
            seed=config.seed,
        )

    def __enter__(self) -> "DataFeed":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self.loader.close()
        self.pool.close()

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        """An endless supply of batches for `epoch`: passes over the samples repeat as needed."""
        repeat = 0
        while True:
            # Distinct (epoch, repeat) pairs keep each pass's shuffle and augmentation different.
            yield from self.loader.epoch(self.data.train_samples, epoch * 1000 + repeat)
            repeat += 1

    def validation_batches(self, limit: Optional[int] = None) -> Iterator[ValidationBatch]:
        samples = self.data.validation_samples or []
        return iter_validation_samples(
            samples[:limit], self.data.validation_label_map, self.config.validation_mini_batch_size, self.pool
        )
