"""Parallel decode + label map + augment + batch, in worker processes, so the devices never wait.

Design choices:
- Workers are *spawned* processes (not forked): by the time batches are needed the main process has started
  MXNet's engine threads (and maybe CUDA), which do not survive a fork. Spawned workers start from a fresh
  interpreter; they only use numpy and PIL (decode, label map, transforms).
- One task per batch: the worker reads (File mode) or receives (Pipe mode) the encoded samples, decodes,
  augments, normalises and stacks them, so the main process only unpickles two ready arrays per batch.
- Results come back in submission order; at most `prefetch_batches` batches are in flight (bounded memory,
  and a Pipe-mode stream is never read far ahead of training).
- Every sample's randomness comes from `(seed, epoch, position)`, so augmentation does not depend on how
  many workers there are or which one handled a batch.
- A worker's exception (DataError naming the file) is re-raised as is in the main process; a worker that
  dies (e.g. out of memory) raises an error instead of hanging; leaving an epoch early cancels what is queued.

Batches are `(images, masks)`: images float32 N x 3 x C x C (normalised), masks uint8 N x C x C with
255 = ignore (training maps 255 to -1 right before the loss).
"""

import multiprocessing
import os
import signal
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Callable, Deque, Iterable, Iterator, List, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np

from segmaker.data.decode import decode_sample
from segmaker.data.labelmaps import LabelMap
from segmaker.data.samples import EncodedSample, FileSample
from segmaker.transforms import TrainTransform

SampleRef = Union[FileSample, EncodedSample]  # both have .read() -> EncodedSample
Batch = Tuple[np.ndarray, np.ndarray]
ValidationBatch = Tuple[List[np.ndarray], List[np.ndarray]]
Job = TypeVar("Job")
Result = TypeVar("Result")

_SHUFFLE_STREAM = 0  # seed-sequence tags: the epoch's shuffle and each sample's augmentation draw apart
_SAMPLE_STREAM = 1


def resolve_worker_count(data_workers: Optional[int]) -> int:
    """The `data_workers` hyperparameter, or one worker per CPU core when it is "auto" (None)."""
    return data_workers if data_workers is not None else (os.cpu_count() or 1)


def _ignore_interrupts() -> None:
    # Ctrl-C, and a SIGTERM sent to the whole process group (some supervisors and `kill -- -PGID` do that),
    # reach every worker; the main process alone decides how to stop (it finishes the iteration, checkpoints,
    # then shuts the pool down), rather than every worker dying and breaking the pool mid-checkpoint.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class WorkerPool:
    """Worker processes that run jobs and hand back results in order; `num_workers=0` runs jobs inline.

    The processes start on first use and are reused across epochs; `close()` (or the `with` block) ends them.
    """

    def __init__(self, num_workers: int):
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, not {num_workers}")
        self.num_workers = num_workers
        self._executor: Optional[ProcessPoolExecutor] = None

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """End the worker processes (waits for the batches they are working on, at most one each)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    def map_ordered(
        self, function: Callable[[Job], Result], jobs: Iterable[Job], max_in_flight: int
    ) -> Iterator[Result]:
        """function(job) for each job, in order, with at most `max_in_flight` jobs submitted ahead."""
        if self.num_workers == 0:
            return (function(job) for job in jobs)
        return self._map_in_processes(function, jobs, max(1, max_in_flight))

    def _map_in_processes(self, function, jobs, max_in_flight: int) -> Iterator:
        executor = self._started()
        pending: Deque[Future] = deque()
        try:
            for job in jobs:
                pending.append(executor.submit(function, job))
                if len(pending) >= max_in_flight:
                    yield self._result(pending.popleft())
            while pending:
                yield self._result(pending.popleft())
        finally:
            # Early stop, error or KeyboardInterrupt: drop queued jobs so no stale batch is left behind.
            self._abandon(pending)

    def _started(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=self.num_workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_ignore_interrupts,
            )
        return self._executor

    def _result(self, future: Future):
        try:
            return future.result()
        except BrokenProcessPool:
            self.close()
            raise RuntimeError(
                "a data worker process died unexpectedly (killed, out of memory, or failed to start); "
                "try a smaller data_workers or mini_batch_size"
            ) from None

    def _abandon(self, pending: Deque[Future]) -> None:
        for future in pending:
            future.cancel()
        if any(not future.done() for future in pending):
            self.close()  # jobs still running: restart the processes rather than leave them busy


@dataclass(frozen=True)
class _BatchJob:
    """What one worker needs for one training batch (picklable)."""

    samples: Tuple[SampleRef, ...]
    seeds: Tuple[Tuple[int, ...], ...]
    transform: TrainTransform
    label_map: LabelMap


def _load_training_batch(job: _BatchJob) -> Batch:
    images, masks = [], []
    for sample, seed in zip(job.samples, job.seeds):
        image, mask = decode_sample(sample.read(), job.label_map)
        image, mask = job.transform(image, mask, np.random.default_rng(seed))
        images.append(image)
        masks.append(mask)
    return np.stack(images), np.stack(masks)


@dataclass(frozen=True)
class _DecodeJob:
    samples: Tuple[SampleRef, ...]
    label_map: LabelMap


def _decode_chunk(job: _DecodeJob) -> ValidationBatch:
    pairs = [decode_sample(sample.read(), job.label_map) for sample in job.samples]
    return [image for image, _ in pairs], [mask for _, mask in pairs]


Item = TypeVar("Item")


def _chunks(items: Iterable[Item], size: int, drop_last: bool) -> Iterator[List[Item]]:
    chunk: List[Item] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk and not drop_last:
        yield chunk


class BatchLoader:
    """Training batches from File-mode samples (a list, shuffled per epoch) or a Pipe-mode stream.

    Use as a context manager, or call `close()`: it owns its worker processes unless given a `pool`.
    """

    def __init__(
        self,
        transform: TrainTransform,
        label_map: LabelMap,
        batch_size: int,
        *,
        num_workers: Optional[int] = None,
        pool: Optional[WorkerPool] = None,
        seed: Optional[int] = None,
        drop_last: bool = True,
        prefetch_batches: Optional[int] = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, not {batch_size}")
        self.transform = transform
        self.label_map = label_map
        self.batch_size = batch_size
        self.drop_last = drop_last
        self._owns_pool = pool is None
        self.pool = pool if pool is not None else WorkerPool(resolve_worker_count(num_workers))
        # Without a seed, draw one now: epochs still differ from each other, and batches stay independent
        # of the worker count within the run.
        self.seed = seed if seed is not None else int(np.random.SeedSequence().entropy % (2**32))
        self.prefetch_batches = prefetch_batches or 2 * max(1, self.pool.num_workers)

    def __enter__(self) -> "BatchLoader":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_pool:
            self.pool.close()

    def batches_per_epoch(self, num_samples: int) -> int:
        """floor(num_samples / batch_size) with drop_last (the built-in's iterations per epoch), else ceil."""
        full, rest = divmod(num_samples, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def epoch(
        self,
        samples: Union[Sequence[SampleRef], Iterable[EncodedSample]],
        epoch: int,
        *,
        shuffle: bool = True,
        max_batches: Optional[int] = None,
    ) -> Iterator[Batch]:
        """One epoch of batches. A sequence is shuffled (seeded by seed and epoch); a stream is taken as is.

        `max_batches` caps the epoch (Pipe mode: floor(num_training_samples / mini_batch_size)).
        """
        ordered = self._ordered(samples, epoch) if shuffle and isinstance(samples, Sequence) else samples
        jobs = self._jobs(ordered, epoch)
        if max_batches is not None:
            jobs = (job for _, job in zip(range(max_batches), jobs))
        return self.pool.map_ordered(_load_training_batch, jobs, self.prefetch_batches)

    def _ordered(self, samples: Sequence[SampleRef], epoch: int) -> List[SampleRef]:
        order = np.random.default_rng([self.seed, epoch, _SHUFFLE_STREAM]).permutation(len(samples))
        return [samples[i] for i in order]

    def _jobs(self, samples: Iterable[SampleRef], epoch: int) -> Iterator[_BatchJob]:
        position = 0
        for chunk in _chunks(samples, self.batch_size, self.drop_last):
            seeds = tuple((self.seed, epoch, _SAMPLE_STREAM, position + i) for i in range(len(chunk)))
            position += len(chunk)
            yield _BatchJob(tuple(chunk), seeds, self.transform, self.label_map)


def iter_validation_samples(
    samples: Iterable[SampleRef],
    label_map: LabelMap,
    batch_size: int,
    pool: WorkerPool,
    prefetch_batches: Optional[int] = None,
) -> Iterator[ValidationBatch]:
    """Validation batches at each image's own resolution, decoded in parallel and without augmentation.

    Each batch is (list of HxWx3 uint8 RGB images, list of HxW uint8 masks, 255 = ignore); the last batch
    may be smaller. The images are not normalised: inference does that for its own working size.
    """
    jobs = (_DecodeJob(tuple(chunk), label_map) for chunk in _chunks(samples, batch_size, drop_last=False))
    return pool.map_ordered(_decode_chunk, jobs, prefetch_batches or 2 * max(1, pool.num_workers))
