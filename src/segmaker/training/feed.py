"""The data side of training: which samples (File mode lists or Pipe-mode streams), which label maps,
and the loader that turns them into batches.

File mode: the samples are listed once, whole on every host; `data.order.DataOrder` decides which of them
form each global batch of each epoch and which slice of it this host trains on. Pipe mode: each pass over
a channel reads the next FIFO SageMaker opens (`train_0`, `train_1`, ... counted within this process,
because a restarted job gets its FIFOs numbered from 0 again), an epoch is `num_training_samples` long,
and the global batches are consecutive pairs of the stream.
"""

import logging
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from segmaker.config import TrainingConfig
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
)
from segmaker.data.loader import Batch, ValidationBatch
from segmaker.data.order import DataOrder
from segmaker.data.pipe import PipeChannel
from segmaker.environment import Paths
from segmaker.errors import UserError
from segmaker.training.job import TrainingJob
from segmaker.transforms import train_transform

log = logging.getLogger(__name__)

LABEL_MAP_CHANNEL = "label_map"
PIPE_SHUFFLE_BUFFER = 64  # (image, mask) pairs held back to shuffle a Pipe-mode stream


@dataclass(frozen=True)
class Split:
    """One split's samples: a File-mode list, or a Pipe-mode channel streamed anew on every pass."""

    files: Optional[List[FileSample]] = None
    pipe: Optional[PipeChannel] = None

    @property
    def size(self) -> Optional[int]:
        return None if self.files is None else len(self.files)


@dataclass(frozen=True)
class TrainingData:
    """This worker's splits and the label maps that decode their masks."""

    train: Split
    validation: Optional[Split]
    train_label_map: LabelMap
    validation_label_map: LabelMap

    @property
    def has_validation(self) -> bool:
        return self.validation is not None

    def describe_train(self) -> str:
        if self.train.files is not None:
            return f"{len(self.train.files)} training samples"
        return f"training samples streamed from Pipe-mode channel {self.train.pipe.channel!r}"


def find_training_data(job: TrainingJob, data_seed: int, rank: int = 0, world_size: int = 1) -> TrainingData:
    """The train and validation splits of the job's channels, in File or Pipe mode.

    Every host gets the whole train split: each takes its slice of every global batch (see DataFeed).
    `data_seed` seeds the Pipe-mode shuffle buffer, so every host shuffles a stream alike.
    Validation is shared out among the hosts (every world_size-th sample from `rank`, none dropped: the
    confusion matrices summed over the hosts count every pixel once), unless S3 already split the channel
    (`S3DistributionType` ShardedByS3Key): then each host validates its whole share.
    """
    num_classes = job.config.num_classes
    label_dir = label_map_dir(job.paths)
    validation = None
    if _is_pipe(job.channels, "validation") or has_split(job.paths, "validation"):
        validation = _split(job, "validation", data_seed, *_validation_share(job, rank, world_size))
    return TrainingData(
        train=_split(job, "train", data_seed),
        validation=validation,
        train_label_map=load_label_map(label_map_file(label_dir, "train"), num_classes),
        validation_label_map=load_label_map(label_map_file(label_dir, "validation"), num_classes),
    )


def _split(job: TrainingJob, name: str, data_seed: int, rank: int = 0, world_size: int = 1) -> Split:
    if _is_pipe(job.channels, name):
        return Split(pipe=PipeChannel(job.paths, name, rank, world_size, _shuffle_buffer(name), data_seed))
    return Split(files=find_file_samples(job.paths, name)[rank::world_size])


def _validation_share(job: TrainingJob, rank: int, world_size: int) -> Tuple[int, int]:
    return (0, 1) if is_sharded_by_s3_key(job, "validation") else (rank, world_size)


def is_sharded_by_s3_key(job: TrainingJob, name: str) -> bool:
    """S3 already gave each host its own share of this channel (S3DistributionType ShardedByS3Key)."""
    channel = job.channels.get(name)
    return channel is not None and (channel.s3_distribution_type or "").lower() == "shardedbys3key"


def _is_pipe(channels: Dict[str, object], name: str) -> bool:
    channel = channels.get(name)
    return channel is not None and channel.is_pipe


def _shuffle_buffer(split: str) -> int:
    return PIPE_SHUFFLE_BUFFER if split == "train" else 0


def label_map_dir(paths: Paths) -> Optional[Path]:
    folder = paths.channel_dir(LABEL_MAP_CHANNEL)
    return folder if folder.is_dir() else None


def iterations_per_epoch(num_training_samples: Optional[int], found: Optional[int], batch_size: int) -> int:
    """floor(num_training_samples / mini_batch_size) as in the built-in; the count defaults to the data's.

    `found` is None in Pipe mode, where the stream's length is unknown and num_training_samples required.
    """
    if num_training_samples is None and found is None:
        raise UserError(
            "num_training_samples is required when the train channel uses Pipe mode: it sets how many"
            " iterations an epoch has"
        )
    if num_training_samples is not None and found is not None and num_training_samples > found:
        log.warning(
            "num_training_samples is %d but the train channel holds %d samples; an epoch re-visits samples",
            num_training_samples,
            found,
        )
    samples = num_training_samples if num_training_samples is not None else found
    iterations = samples // batch_size
    if iterations < 1:
        raise UserError(
            f"mini_batch_size {batch_size} is larger than the {samples} training samples: an epoch would"
            " run no iteration; lower mini_batch_size or add data"
        )
    return iterations


class DataFeed:
    """Worker processes that decode and augment; training batches per epoch and validation batches.

    The first `keep_examples` validation samples of the latest validation pass stay in memory
    (`examples`) for the prediction plot, so plotting never reads a channel (or a FIFO) again.
    """

    def __init__(
        self,
        config: TrainingConfig,
        data: TrainingData,
        order: DataOrder,
        keep_examples: int = 0,
    ):
        self.config = config
        self.data = data
        self.order = order
        self.keep_examples = keep_examples
        self.examples: Tuple[List[np.ndarray], List[np.ndarray]] = ([], [])
        self._pipe_passes = {"train": 0, "validation": 0}
        self.pool = WorkerPool(resolve_worker_count(config.data_workers))
        self.loader = BatchLoader(
            train_transform(config.base_size, config.crop_size, config.image_scale),
            data.train_label_map,
            order.batch_size,
            pool=self.pool,
            seed=order.seed,
            rank=order.rank,
            world_size=order.world_size,
        )

    def __enter__(self) -> "DataFeed":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self.loader.close()
        self.pool.close()

    def train_batches(self, epoch: int, first: int, count: int) -> Iterator[Batch]:
        """This host's part of global batches first .. first+count-1 of `epoch` (fewer only if a Pipe-mode
        stream ends early).

        Only what is needed is submitted to the workers: abandoning prefetched batches would make the
        pool restart its processes, which costs seconds before validation can decode anything.
        In Pipe mode the stream cannot be replayed: a resumed epoch numbers its batches from `first` (for
        the augmentation seeds) but takes them from the start of the new stream.
        """
        split = self.data.train
        if split.pipe is None:
            yield from self.loader.epoch(split.files, epoch, first_batch=first, max_batches=count)
            return
        with closing(split.pipe.epoch(self._next_pipe_pass("train"))) as stream:
            yield from self.loader.epoch(stream, epoch, first_batch=first, max_batches=count)

    def validation_batches(self) -> Iterator[ValidationBatch]:
        """One pass over the validation split at each image's own resolution."""
        split = self.data.validation
        if split.pipe is None:
            samples: Iterable = split.files
        else:
            samples = split.pipe.epoch(self._next_pipe_pass("validation"))
        batches = iter_validation_samples(
            samples, self.data.validation_label_map, self.config.validation_mini_batch_size, self.pool
        )
        self.examples = ([], [])
        for images, masks in batches:
            self._keep(images, masks)
            yield images, masks

    def _keep(self, images: List[np.ndarray], masks: List[np.ndarray]) -> None:
        room = self.keep_examples - len(self.examples[0])
        if room > 0:
            self.examples[0].extend(images[:room])
            self.examples[1].extend(masks[:room])

    def _next_pipe_pass(self, split: str) -> int:
        index = self._pipe_passes[split]
        self._pipe_passes[split] = index + 1
        return index
