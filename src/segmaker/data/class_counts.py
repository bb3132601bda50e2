"""Pixels per class in a split's masks (for `class_weights=balanced`); runs in the decoding workers."""

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from segmaker.data.decode import decode_mask
from segmaker.data.labelmaps import LabelMap
from segmaker.data.loader import WorkerPool
from segmaker.data.samples import FileSample

IN_FLIGHT = 64


@dataclass(frozen=True)
class _CountJob:
    sample: FileSample
    label_map: LabelMap
    num_classes: int


def _count(job: _CountJob) -> np.ndarray:
    sample = job.sample.read()
    mask = decode_mask(sample.mask, sample.mask_label, job.label_map)
    return np.bincount(mask.ravel(), minlength=256)[: job.num_classes].astype(np.int64)


def count_class_pixels(
    samples: Iterable[FileSample], label_map: LabelMap, num_classes: int, pool: WorkerPool
) -> np.ndarray:
    """int64 vector: the pixels of each class over every mask (255 = ignore is not counted)."""
    total = np.zeros(num_classes, np.int64)
    jobs = (_CountJob(sample, label_map, num_classes) for sample in samples)
    for counts in pool.map_ordered(_count, jobs, IN_FLIGHT):
        total += counts
    return total
