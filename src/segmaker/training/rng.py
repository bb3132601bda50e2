"""The random generators of a training run, in one place, so that a resumed run draws what it would have.

- Python's and numpy's global generators: seeded once from the data seed; their states go into every
  checkpoint and come back on resume (nothing in segmaker draws from them during training today, but
  a library might).
- MXNet's generators (dropout in every GluonCV head): MXNet has no API to read their state, so they are
  re-seeded before every training step from (data seed, global iteration). Step i then draws the same
  numbers whether or not the run was interrupted before it. `mx.random.seed` is queued on the engine
  behind the operations already issued (it mutates the random resource they read), so the previous
  step's dropout is not affected.
- Data order and augmentation are pure functions of (data seed, epoch, position): `data.order`.
"""

import random
from typing import Iterable, Iterator, TypeVar

import mxnet as mx
import numpy as np

_STEP_STREAM = 2  # seed-sequence tag, apart from data.order's shuffle (0) and augmentation (1) streams

Item = TypeVar("Item")


def seed_all(seed: int) -> None:
    """Python's, numpy's and MXNet's generators from the run's seed (before the network is built)."""
    random.seed(seed)
    np.random.seed(seed)
    mx.random.seed(seed)


def step_seed(seed: int, iteration: int, rank: int = 0) -> int:
    entropy = [seed, _STEP_STREAM, iteration, rank]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0] % (2**31))


def seeded_steps(batches: Iterable[Item], seed: int, first_iteration: int, rank: int = 0) -> Iterator[Item]:
    """`batches` as they are, MXNet re-seeded for global iteration i as batch i is handed to the step.

    Each host (`rank`) gets its own stream, as the devices of one host draw different dropout masks."""
    for iteration, batch in enumerate(batches, start=first_iteration):
        mx.random.seed(step_seed(seed, iteration, rank))
        yield batch


def capture() -> dict:
    """Python's and numpy's generator states, as JSON (for the checkpoint)."""
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(position), int(has_gauss), float(cached)],
    }


def restore(states: dict) -> None:
    """Put back what `capture()` returned."""
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
