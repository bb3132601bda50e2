"""Parallel decode + label map + augment + batch, in worker processes, so the devices never wait.

Design choices:
- Workers are *spawned* processes (not forked): by the time batches are needed the main process has started
  MXNet's engine threads (and maybe CUDA), which do not survive a fork. Spawned workers start from a fresh
  interpreter; they only use numpy and PIL (decode, label map, transforms).
- One task per batch: the worker reads (File mode) or receives (Pipe mode) the encoded samples, decodes,
  augments, normalises and stacks them, so the main process only unpickles two ready arrays per batch.
- Results come back in submission order; at most `prefetch_batches` batches are in flight (bounded memory,
  and a Pipe-mode stream is never read far ahead of training).
- Which samples form each batch, and each sample's augmentation seed, come from `data.order.DataOrder`:
  a pure function of (seed, epoch, position), independent of the worker processes, the hosts and resumption.
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
from segmaker.data.order import DataOrder, LocalBatch, chunks, draw_seed
from segmaker.data.samples import EncodedSample, FileSample
from segmaker.transforms import TrainTransform

SampleRef = Union[FileSample, EncodedSample]  # both have .read() -> EncodedSample
Batch = Tuple[np.ndarray, np.ndarray]
ValidationBatch = Tuple[List[np.ndarray], List[np.ndarray]]
Job = TypeVar("Job")
Result = TypeVar("Result")


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


class BatchLoader:
    """Training batches from File-mode samples (a list) or a Pipe-mode stream, in `data.order`'s order.

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
        rank: int = 0,
        world_size: int = 1,
        prefetch_batches: Optional[int] = None,
    ):
        self.transform = transform
        self.label_map = label_map
        # Without a seed, draw one now: epochs still differ from each other, and batches stay independent
        # of the worker count within the run.
        self.order = DataOrder(draw_seed() if seed is None else seed, batch_size, rank, world_size)
        self._owns_pool = pool is None
        self.pool = pool if pool is not None else WorkerPool(resolve_worker_count(num_workers))
        self.prefetch_batches = prefetch_batches or 2 * max(1, self.pool.num_workers)

    def __enter__(self) -> "BatchLoader":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_pool:
            self.pool.close()

    def batches_per_epoch(self, num_samples: int) -> int:
        """floor(num_samples / batch_size), as the built-in counts iterations (a short last batch dropped)."""
        return num_samples // self.order.batch_size

    def epoch(
        self,
        samples: Union[Sequence[SampleRef], Iterable[EncodedSample]],
        epoch: int,
        *,
        first_batch: int = 0,
        max_batches: Optional[int] = None,
    ) -> Iterator[Batch]:
        """This worker's part of global batches `first_batch`, `first_batch + 1`, ... of `epoch`.

        A sequence (File mode) is ordered by `DataOrder`; `max_batches` defaults to floor(N / batch size) and
        may be more (an epoch longer than the data continues with the next permutation). A stream (Pipe mode)
        is taken in its own order, until it ends or `max_batches`.
        """
        if isinstance(samples, Sequence):
            count = self.batches_per_epoch(len(samples)) if max_batches is None else max_batches
            jobs = self._file_jobs(samples, epoch, first_batch, count)
        else:
            jobs = self._stream_jobs(samples, epoch, first_batch, max_batches)
        return self.pool.map_ordered(_load_training_batch, jobs, self.prefetch_batches)

    def _file_jobs(self, samples: Sequence[SampleRef], epoch: int, first: int, count: int) -> Iterator:
        if not samples:
            return
        for batch in range(first, first + count):
            local = self.order.local_batch(epoch, batch)
            chosen = tuple(samples[i] for i in self.order.sample_indices(len(samples), local))
            yield self._job(chosen, local)

    def _stream_jobs(self, stream: Iterable[EncodedSample], epoch: int, first: int, count: Optional[int]):
        for local, chosen in self.order.split_stream(stream, epoch, first, count):
            yield self._job(tuple(chosen), local)

    def _job(self, samples: Tuple[SampleRef, ...], local: LocalBatch) -> _BatchJob:
        return _BatchJob(samples, self.order.augmentation_seeds(local), self.transform, self.label_map)


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
    jobs = (_DecodeJob(tuple(chunk), label_map) for chunk in chunks(samples, batch_size))
    return pool.map_ordered(_decode_chunk, jobs, prefetch_batches or 2 * max(1, pool.num_workers))
