"""Pipe mode: (image, mask) samples from the RecordIO stream SageMaker writes into one FIFO per epoch.

With an augmented manifest and `AttributeNames` [source-ref, <label>-ref], SageMaker sends, for each manifest
line, the image's bytes as one record and the mask's bytes as the next, into `<channel>_<epoch>`. The FIFO
for epoch e+1 may appear only once epoch e's stream was read to its end, so it is waited for (bounded).

The FIFO is read and parsed on a background thread into a bounded queue, so reading overlaps what the
consumer does with the samples (handing them to the data workers, training). The thread ends with the
stream, and its errors (a framing error naming the record and byte offset, an I/O error) are raised in the
consumer at the point of the stream where they happened, after the samples before them.

Stopping early is safe: leaving the iteration (or closing the generator) wakes the reading thread wherever
it waits (on the FIFO, through a wake-up pipe it polls beside it; on the full queue, by a timed put), the
thread closes our read end and is joined. The writer's next write then fails with EPIPE and it stops writing
that epoch; nothing stays blocked. (Our emulator, `pipe_feed`, takes that as the end of the epoch and goes
on with the next FIFO.) The opposite is what hurts on SageMaker: a FIFO nobody opens makes the job fail with
"SageMaker pipe channel timed out".

A Pipe-mode stream has no length known in advance: the training loop needs `num_training_samples` to know
how many iterations an epoch has.
"""

import io
import logging
import os
import queue
import random
import select
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, TypeVar

from segmaker.data.recordio import DEFAULT_CHUNK_SIZE, Record, read_records
from segmaker.data.samples import EncodedSample
from segmaker.environment import Paths
from segmaker.errors import DataError, UserError

LOG = logging.getLogger(__name__)

DEFAULT_WAIT_SECONDS = 300.0
DEFAULT_QUEUE_SAMPLES = 32  # parsed pairs the reading thread may hold ahead of the consumer
_POLL_SECONDS = 0.05
_JOIN_SECONDS = 10.0
Item = TypeVar("Item")


@dataclass(frozen=True)
class PipeChannel:
    """One Pipe-mode channel; `epoch(e)` streams that epoch's samples.

    `shuffle_buffer` pairs are held and drawn from at random (0: keep the stream's order); the draw is
    seeded by (seed, epoch, rank). With several hosts, each takes every `world_size`-th pair, starting at
    `rank` (with S3DistributionType FullyReplicated every host receives the whole stream).
    """

    paths: Paths
    channel: str
    rank: int = 0
    world_size: int = 1
    shuffle_buffer: int = 0
    seed: Optional[int] = None
    wait_seconds: float = DEFAULT_WAIT_SECONDS
    chunk_size: int = DEFAULT_CHUNK_SIZE
    queue_samples: int = DEFAULT_QUEUE_SAMPLES

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in [0, world_size={self.world_size})")
        if self.shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, not {self.shuffle_buffer}")
        if self.queue_samples < 1:
            raise ValueError(f"queue_samples must be >= 1, not {self.queue_samples}")

    def fifo_path(self, epoch: int) -> Path:
        return self.paths.pipe_path(self.channel, epoch)

    def epoch(self, epoch: int) -> Iterator[EncodedSample]:
        """This host's samples of `epoch`, read from `<channel>_<epoch>` as they arrive."""
        path = self.fifo_path(epoch)
        wait_for_fifo(path, self.channel, epoch, self.wait_seconds)
        # The open blocks until SageMaker's writer is there, as reading it in the foreground would.
        reader = BackgroundReader(path, self._read_pairs, self.queue_samples)
        try:
            yield from shuffle_buffered(reader, self.shuffle_buffer, self._rng(epoch))
        finally:
            reader.close()

    def _read_pairs(self, stream: io.RawIOBase, path: Path) -> Iterator[EncodedSample]:
        records = read_records(stream, source=str(path), chunk_size=self.chunk_size)
        try:
            yield from take_shard(pair_records(records, path.name), self.rank, self.world_size)
        finally:
            records.close()  # before the FIFO closes, so the reader lets go of it in order

    def _rng(self, epoch: int) -> random.Random:
        if self.seed is None:
            return random.Random()
        return random.Random(f"{self.seed}/{epoch}/{self.rank}")


def wait_for_fifo(path: Path, channel: str, epoch: int, wait_seconds: float) -> None:
    """Return once `path` exists (a FIFO, or a plain file in local tests); UserError after `wait_seconds`."""
    deadline = time.monotonic() + wait_seconds
    while not path.exists():
        if time.monotonic() >= deadline:
            raise UserError(
                f"Pipe mode: {path} (channel {channel!r}, epoch {epoch}) did not appear within "
                f"{wait_seconds:g} s. SageMaker creates one FIFO per channel and epoch, the next once the "
                "previous one was read to its end; check that the channel's TrainingInputMode is Pipe"
            )
        time.sleep(_POLL_SECONDS)
    mode = path.stat().st_mode
    if not (stat.S_ISFIFO(mode) or stat.S_ISREG(mode)):
        raise UserError(
            f"Pipe mode: {path} is neither a FIFO nor a file; is channel {channel!r} in File mode?"
        )


class _Stopped(Exception):
    """Raised inside the reading thread when the consumer closed the reader."""


class _Failure:
    """An exception of the reading thread, queued for the consumer to raise."""

    def __init__(self, error: BaseException):
        self.error = error


_END = object()  # queued after the stream's last sample


class WakeableFile(io.RawIOBase):
    """A raw, blocking file descriptor whose reads can be abandoned from another thread.

    Each read first polls the descriptor together with the read end of a wake-up pipe; `wake()` writes
    to that pipe, and the waiting (or next) read raises _Stopped instead of blocking on a FIFO whose
    writer is alive but silent. Closing the descriptor from the other thread instead would race with a
    read in progress (and could hit a reused descriptor number).
    """

    def __init__(self, path: Path):
        super().__init__()
        self._fd = os.open(str(path), os.O_RDONLY)
        self._wake_read, self._wake_write = os.pipe()
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN | select.POLLPRI)
        self._poll.register(self._wake_read, select.POLLIN)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        events = dict(self._poll.poll())
        if self._wake_read in events:
            raise _Stopped()
        return os.readv(self._fd, [buffer])

    def wake(self) -> None:
        """Make the reading thread's current or next read raise _Stopped (callable from any thread)."""
        try:
            os.write(self._wake_write, b"x")
        except OSError:
            pass  # already closed: the reader is gone

    def close(self) -> None:
        if not self.closed:
            for fd in (self._fd, self._wake_read, self._wake_write):
                os.close(fd)
        super().close()


class BackgroundReader:
    """Iterate `parse(stream, path)` over the opened FIFO on a daemon thread, through a bounded queue.

    Iterating the reader yields the parsed items in order, then raises the thread's exception if it
    failed. `close()` (also after a partial iteration) stops the thread wherever it waits, closes the
    FIFO (the writer gets EPIPE) and joins the thread.
    """

    def __init__(self, path: Path, parse, max_queued: int):
        self._stream = WakeableFile(path)
        self._queue: queue.Queue[object] = queue.Queue(max_queued)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(parse, path), name=f"segmaker-pipe-{path.name}", daemon=True
        )
        self._thread.start()

    def __iter__(self) -> Iterator[EncodedSample]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item

    def _run(self, parse, path: Path) -> None:
        try:
            for item in parse(self._stream, path):
                if not self._put(item):
                    return
            self._put(_END)
        except _Stopped:
            pass
        except BaseException as exc:  # handed to the consumer; nothing is printed by the thread
            self._put(_Failure(exc))
        finally:
            self._stream.close()

    def _put(self, item: object) -> bool:
        """Queue `item` unless the consumer stopped meanwhile (a full queue is waited on in slices)."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def close(self) -> None:
        self._stop.set()
        self._stream.wake()
        _drain(self._queue)  # frees a put in progress at once
        self._thread.join(_JOIN_SECONDS)
        if self._thread.is_alive():
            LOG.warning("the Pipe-mode reading thread %s did not stop within %g s",
                        self._thread.name, _JOIN_SECONDS)


def _drain(items: "queue.Queue[object]") -> None:
    try:
        while True:
            items.get_nowait()
    except queue.Empty:
        pass


def pair_records(records: Iterable[Record], stream_name: str) -> Iterator[EncodedSample]:
    """(image, mask) records in turn -> EncodedSample; an unpaired last record is a DataError."""
    iterator = iter(records)
    for image in iterator:
        mask = next(iterator, None)
        if mask is None:
            raise DataError(
                f"Pipe mode {stream_name}: record {image.index} at byte offset {image.offset} has no mask "
                f"record after it ({image.index + 1} records in all, an odd number). Each manifest line must "
                "send exactly two records, image then mask: give AttributeNames exactly "
                '["source-ref", "<label attribute>-ref"]'
            )
        yield EncodedSample(
            name=_record_name(stream_name, image),
            image=image.payload,
            mask=mask.payload,
            mask_name=_record_name(stream_name, mask),
        )


def _record_name(stream_name: str, record: Record) -> str:
    return f"{stream_name} record {record.index} (byte offset {record.offset})"


def take_shard(items: Iterable[Item], rank: int, world_size: int) -> Iterator[Item]:
    """Every `world_size`-th item starting at `rank` (the others are read and dropped)."""
    for position, item in enumerate(items):
        if position % world_size == rank:
            yield item


def shuffle_buffered(items: Iterable[Item], buffer_size: int, rng: random.Random) -> Iterator[Item]:
    """A streaming shuffle: hold `buffer_size` items, emit a random one as each new item arrives.

    Memory is bounded by the buffer; a bigger buffer mixes more (0 or 1: the stream's order).
    """
    if buffer_size <= 1:
        yield from items
        return
    held: List[Item] = []
    for item in items:
        if len(held) < buffer_size:
            held.append(item)
            continue
        slot = rng.randrange(buffer_size)
        yield held[slot]
        held[slot] = item
    rng.shuffle(held)
    yield from held
