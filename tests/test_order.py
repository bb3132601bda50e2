"""Data order: one permutation per epoch, global batches, each host's slice of them, resumable anywhere."""

from collections import Counter

import numpy as np
import pytest

from segmaker.data.labelmaps import LabelMap
from segmaker.data.loader import BatchLoader
from segmaker.data.order import DataOrder
from segmaker.data.samples import find_file_samples
from segmaker.errors import UserError
from segmaker.transforms import train_transform

LABELS = LabelMap.from_scale(1, 3)
TRANSFORM = train_transform(base_size=48, crop_size=32)


def global_batch(order: DataOrder, num_samples: int, epoch: int, batch: int):
    """The global batch as every rank's slice of it, put back together."""
    world = order.world_size
    parts = [DataOrder(order.seed, order.batch_size, rank, world) for rank in range(world)]
    indices, seeds = [], []
    for part in parts:
        local = part.local_batch(epoch, batch)
        indices += part.sample_indices(num_samples, local)
        seeds += part.augmentation_seeds(local)
    return indices, seeds


def test_one_host_and_four_hosts_see_the_same_global_batches():
    for batch in range(5):
        one_host = global_batch(DataOrder(7, 8), 40, 3, batch)
        assert one_host == global_batch(DataOrder(7, 8, 0, 4), 40, 3, batch)


def test_an_epoch_is_one_permutation_and_epochs_differ():
    order = DataOrder(7, 4)
    epoch0 = [i for b in range(5) for i in order.sample_indices(20, order.local_batch(0, b))]
    epoch1 = [i for b in range(5) for i in order.sample_indices(20, order.local_batch(1, b))]
    assert sorted(epoch0) == sorted(epoch1) == list(range(20))
    assert epoch0 != epoch1
    assert epoch0 != list(range(20))  # shuffled


def test_an_epoch_longer_than_the_data_goes_on_with_the_next_permutation():
    order = DataOrder(1, 3)
    seen = Counter(i for b in range(8) for i in order.sample_indices(12, order.local_batch(0, b)))
    assert set(seen.values()) == {2} and len(seen) == 12  # 24 positions: every sample exactly twice


def test_each_host_takes_a_contiguous_slice_of_every_global_batch():
    assert DataOrder(0, 6, 1, 3).local_batch(2, 4).positions == (26, 27)  # batch 4 = positions 24..29
    with pytest.raises(UserError, match="mini_batch_size 6 is not a multiple of the 4 hosts"):
        DataOrder(0, 6, 0, 4)


def test_a_stream_is_cut_into_global_batches_and_each_host_takes_its_slice():
    order = DataOrder(0, 4, 1, 2)
    consumed = []

    def stream():
        for item in range(11):
            consumed.append(item)
            yield item

    parts = list(order.split_stream(stream(), epoch=0, first=5))
    assert [items for _, items in parts] == [[2, 3], [6, 7]]  # the short last global batch (8..10) dropped
    assert [local.positions for local, _ in parts] == [(22, 23), (26, 27)]  # numbered from batch 5
    consumed.clear()
    assert len(list(order.split_stream(stream(), epoch=0, count=1))) == 1
    assert consumed == [0, 1, 2, 3]  # not read beyond what was asked for


def test_two_hosts_load_exactly_the_one_host_batches_and_a_resume_starts_at_any_batch(opt_ml):
    samples = find_file_samples(opt_ml, "train")  # 8 samples

    def batches(rank, world_size, first=0):
        part = {"rank": rank, "world_size": world_size}
        with BatchLoader(TRANSFORM, LABELS, 4, num_workers=0, seed=9, **part) as loader:
            return list(loader.epoch(samples, 1, first_batch=first, max_batches=3 - first))

    whole = batches(0, 1)
    halves = zip(batches(0, 2), batches(1, 2))
    for (images, masks), ((images0, masks0), (images1, masks1)) in zip(whole, halves):
        assert np.array_equal(images, np.concatenate([images0, images1]))
        assert np.array_equal(masks, np.concatenate([masks0, masks1]))
    resumed = batches(0, 1, first=2)
    assert len(resumed) == 1 and np.array_equal(resumed[0][0], whole[2][0])
