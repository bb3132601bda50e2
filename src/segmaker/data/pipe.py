"""Pipe mode: (image, mask) samples from the RecordIO stream SageMaker writes into one FIFO per epoch.

With an augmented manifest and `AttributeNames` [source-ref, <label>-ref], SageMaker sends, for each manifest
line, the image's bytes as one record and the mask's bytes as the next, into `<channel>_<epoch>`. The FIFO
for epoch e+1 may appear only once epoch e's stream was read to its end, so it is waited for (bounded).

Stopping early is safe: leaving the iteration (or closing the generator) closes our read end. The writer's
next write then fails with EPIPE and it stops writing that epoch; nothing stays blocked. (Our emulator,
`pipe_feed`, takes that as the end of the epoch and goes on with the next FIFO.) The opposite is what hurts
on SageMaker: a FIFO nobody opens makes the job fail with "SageMaker pipe channel timed out".

A Pipe-mode stream has no length known in advance: the training loop needs `num_training_samples` to know
how many iterations an epoch has.
"""

import random
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, TypeVar

from segmaker.data.recordio import DEFAULT_CHUNK_SIZE, Record, read_records
from segmaker.data.samples import EncodedSample
from segmaker.environment import Paths
from segmaker.errors import DataError, UserError

DEFAULT_WAIT_SECONDS = 300.0
_POLL_SECONDS = 0.05
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

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in [0, world_size={self.world_size})")
        if self.shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, not {self.shuffle_buffer}")

    def fifo_path(self, epoch: int) -> Path:
        return self.paths.pipe_path(self.channel, epoch)

    def epoch(self, epoch: int) -> Iterator[EncodedSample]:
        """This host's samples of `epoch`, read from `<channel>_<epoch>` as they arrive."""
        path = self.fifo_path(epoch)
        wait_for_fifo(path, self.channel, epoch, self.wait_seconds)
        # Unbuffered: read_records does its own large-chunk buffering over the raw FIFO.
        with open(path, "rb", buffering=0) as stream:
            records = read_records(stream, source=str(path), chunk_size=self.chunk_size)
            try:
                mine = take_shard(pair_records(records, path.name), self.rank, self.world_size)
                yield from shuffle_buffered(mine, self.shuffle_buffer, self._rng(epoch))
            finally:
                records.close()  # before the FIFO closes, so the reader lets go of it in order

    def _rng(self, epoch: int) -> random.Random:
        if self.seed is None:
            return random.Random()
        return random.Random(f"{self.seed}/{epoch}/{self.rank}")


def pipe_samples(
    paths: Paths,
    channel: str,
    epoch: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    shuffle_buffer: int = 0,
    seed: Optional[int] = None,
    wait_seconds: float = DEFAULT_WAIT_SECONDS,
) -> Iterator[EncodedSample]:
    """Shorthand for `PipeChannel(paths, channel, ...).epoch(epoch)`."""
    return PipeChannel(paths, channel, rank, world_size, shuffle_buffer, seed, wait_seconds).epoch(epoch)


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
