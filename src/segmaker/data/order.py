"""The order in which training sees its samples: one definition, shared by every host and every resume.

- Epoch e's sample order is the concatenation of permutations of the N training samples, the k-th drawn from
  (seed, e, k); k > 0 only when an epoch asks for more samples than there are (num_training_samples > N).
- Global batch i of epoch e is positions [i*B, (i+1)*B) of that order (B = mini_batch_size, every device of
  every host together).
- Worker `rank` of `world_size` takes the contiguous slice [rank*B/W, (rank+1)*B/W) of every global batch, so
  one host and W hosts see exactly the same global batches (B must be a multiple of W).
- Batch i is computed, not drawn after batches 0..i-1: a resumed epoch starts at its first missing batch.
- Each sample's augmentation is seeded by (seed, epoch, global position), independent of hosts, data
  workers and resumption.

A Pipe-mode stream has its own order (the stream's): there the global batches are B consecutive pairs of
the stream, and each worker still takes its slice of each.
"""

import itertools
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Iterator, List, Optional, Tuple, TypeVar

import numpy as np

from segmaker.errors import UserError

_SHUFFLE_STREAM = 0  # seed-sequence tags: the epoch's permutations and each sample's augmentation draw apart
_SAMPLE_STREAM = 1

Item = TypeVar("Item")


def draw_seed() -> int:
    """A fresh data seed (for a job given no `seed`): log it and keep it in checkpoints."""
    return int(np.random.SeedSequence().entropy % (2**31))


@dataclass(frozen=True)
class LocalBatch:
    """This worker's part of one global batch: the epoch positions it covers (they seed augmentation)."""

    epoch: int
    positions: Tuple[int, ...]


@dataclass(frozen=True)
class DataOrder:
    """Which samples form each global batch, and which part of it this worker trains on."""

    seed: int
    batch_size: int
    rank: int = 0
    world_size: int = 1

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, not {self.batch_size}")
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in [0, world_size {self.world_size})")
        check_divisible(self.batch_size, self.world_size)

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // self.world_size

    def local_batch(self, epoch: int, batch: int) -> LocalBatch:
        """This worker's slice of global batch `batch` of `epoch`."""
        start = batch * self.batch_size + self.rank * self.local_batch_size
        return LocalBatch(epoch, tuple(range(start, start + self.local_batch_size)))

    def sample_indices(self, num_samples: int, batch: LocalBatch) -> List[int]:
        """Indices into the N-sample list (File mode) of the positions of `batch`."""
        indices = []
        for position in batch.positions:
            permutation = _permutation(self.seed, batch.epoch, position // num_samples, num_samples)
            indices.append(int(permutation[position % num_samples]))
        return indices

    def augmentation_seeds(self, batch: LocalBatch) -> Tuple[Tuple[int, ...], ...]:
        """One `np.random.default_rng` seed per sample of `batch`."""
        return tuple((self.seed, batch.epoch, _SAMPLE_STREAM, position) for position in batch.positions)

    def split_stream(
        self, items: Iterable[Item], epoch: int, first: int = 0, count: Optional[int] = None
    ) -> Iterator[Tuple[LocalBatch, List[Item]]]:
        """A stream's global batches (B consecutive items, a short last one dropped) numbered from `first`,
        each reduced to this worker's slice; at most `count` of them."""
        local = self.local_batch_size
        numbers = itertools.count(first) if count is None else range(first, first + count)
        # `numbers` first: zip stops on it without reading one more chunk from the stream.
        for batch, chunk in zip(numbers, chunks(items, self.batch_size)):
            if len(chunk) < self.batch_size:
                return  # a short last global batch is dropped, as in File mode
            yield self.local_batch(epoch, batch), chunk[self.rank * local : (self.rank + 1) * local]


def check_divisible(batch_size: int, world_size: int) -> None:
    """Every host takes an equal contiguous part of each global batch: B must be a multiple of the hosts."""
    if batch_size % world_size:
        raise UserError(
            f"mini_batch_size {batch_size} is not a multiple of the {world_size} hosts: each host trains on"
            f" an equal part of every batch; use a multiple of {world_size}"
        )


@lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, index: int, num_samples: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, _SHUFFLE_STREAM, index]).permutation(num_samples)


def chunks(items: Iterable[Item], size: int) -> Iterator[List[Item]]:
    """Lists of `size` consecutive items, the last one possibly shorter."""
    chunk: List[Item] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
