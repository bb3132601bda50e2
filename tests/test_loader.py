import multiprocessing
import os
import signal
import sys

import numpy as np
import pytest

from segmaker.data.labelmaps import LabelMap
from segmaker.data.loader import BatchLoader, WorkerPool, iter_validation_samples, resolve_worker_count
from segmaker.data.samples import EncodedSample, FileSample, find_file_samples
from segmaker.errors import DataError
from segmaker.transforms import IGNORE, train_transform
from tests.synthetic import encode_image, encode_mask, make_sample, write_split

LABELS = LabelMap.from_scale(1, 3)
TRANSFORM = train_transform(base_size=48, crop_size=32)


def no_worker_processes_left() -> bool:
    return not multiprocessing.active_children()


def stream(count: int, seed: int = 0, consumed=None):
    """A Pipe-mode-like stream of EncodedSample; appends to `consumed` as it is read."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        image, mask = make_sample(rng, 40, 56, 3)
        if consumed is not None:
            consumed.append(index)
        yield EncodedSample(f"record-{index}", encode_image(image), encode_mask(mask))


def test_file_mode_epoch_gives_normalised_batches_and_drops_the_last_partial_one(opt_ml):
    samples = find_file_samples(opt_ml, "train")  # 8 samples
    with BatchLoader(TRANSFORM, LABELS, 3, num_workers=2, seed=0) as loader:
        batches = list(loader.epoch(samples, epoch=0))
        assert loader.batches_per_epoch(len(samples)) == len(batches) == 2
    for images, masks in batches:
        assert images.shape == (3, 3, 32, 32) and images.dtype == np.float32
        assert masks.shape == (3, 32, 32) and masks.dtype == np.uint8
        assert set(np.unique(masks)) <= {0, 1, 2, IGNORE}
        assert -2.5 < images.min() and images.max() < 2.7  # ImageNet-normalised
    assert no_worker_processes_left()


def test_batches_do_not_depend_on_the_worker_count_but_on_seed_and_epoch(opt_ml):
    samples = find_file_samples(opt_ml, "train")

    def epoch_masks(workers: int, epoch: int):
        with BatchLoader(TRANSFORM, LABELS, 2, num_workers=workers, seed=5) as loader:
            return np.concatenate([masks for _, masks in loader.epoch(samples, epoch)])

    inline = epoch_masks(0, 0)
    assert np.array_equal(inline, epoch_masks(2, 0))
    assert not np.array_equal(inline, epoch_masks(0, 1))


def test_pipe_stream_is_read_only_a_bounded_distance_ahead_and_capped():
    consumed = []
    with BatchLoader(TRANSFORM, LABELS, 2, num_workers=1, seed=0, prefetch_batches=2) as loader:
        batches = loader.epoch(stream(40, consumed=consumed), epoch=0, max_batches=5)
        next(batches)
        assert len(consumed) <= 2 * 2 + 2  # the batches in flight, not the whole stream
        assert len(list(batches)) == 4
    assert len(consumed) <= 5 * 2 + 1
    assert no_worker_processes_left()


def test_a_data_error_in_a_worker_reaches_the_main_process_with_the_file_name(opt_ml):
    samples = find_file_samples(opt_ml, "train")
    samples[5].mask_path.write_bytes(b"garbage")
    with pytest.raises(DataError, match=f"{samples[5].mask_path.name}: cannot decode"):
        with BatchLoader(TRANSFORM, LABELS, 2, num_workers=2, seed=0) as loader:
            list(loader.epoch(samples, 0, max_batches=4))  # every sample, the bad one included
    assert no_worker_processes_left()


def test_a_bad_label_in_a_stream_is_a_data_error_naming_the_record():
    image, mask = make_sample(np.random.default_rng(0), 40, 56, 3)
    mask = mask.copy()
    mask[0, 0] = 9
    bad = EncodedSample("s3://bucket/bad.jpg", encode_image(image), encode_mask(mask))
    with BatchLoader(TRANSFORM, LABELS, 2, num_workers=1, seed=0) as loader:
        with pytest.raises(DataError, match=r"mask of s3://bucket/bad.jpg: .*pixel 9"):
            list(loader.epoch(iter([*stream(3), bad]), 0))


def test_leaving_an_epoch_early_and_interrupts_leave_no_processes(opt_ml):
    samples = find_file_samples(opt_ml, "train")

    def interrupted():
        yield from stream(4)
        raise KeyboardInterrupt

    with BatchLoader(TRANSFORM, LABELS, 2, num_workers=2, seed=0) as loader:
        for _ in loader.epoch(samples, 0):
            break
        second_epoch = list(loader.epoch(samples, 1))  # the loader still works after an early stop
        assert len(second_epoch) == 4
        with pytest.raises(KeyboardInterrupt):
            list(loader.epoch(interrupted(), 2))
    assert no_worker_processes_left()


def die(_job):
    os._exit(3)


def modules_loaded(_job):
    return sorted(name for name in ("mxnet", "gluoncv") if name in sys.modules)


def terminate_self(_job):
    os.kill(os.getpid(), signal.SIGTERM)
    return "still alive"


def test_workers_survive_a_sigterm_sent_to_the_whole_process_group():
    # The main process decides how to stop (checkpoint first); a group-wide SIGTERM must not break the pool.
    with WorkerPool(1) as pool:
        assert list(pool.map_ordered(terminate_self, [1, 2], max_in_flight=2)) == ["still alive"] * 2


def test_a_dead_worker_is_an_error_not_a_hang():
    with WorkerPool(1) as pool:
        with pytest.raises(RuntimeError, match="data worker process died"):
            list(pool.map_ordered(die, [1, 2], max_in_flight=2))
        assert list(pool.map_ordered(modules_loaded, [1], max_in_flight=1)) == [
            []
        ]  # workers never load mxnet
    assert no_worker_processes_left()


def test_validation_samples_come_at_full_resolution_in_parallel(tmp_path):
    written = write_split(tmp_path / "images", tmp_path / "masks", 5, seed=3)
    names = sorted(written.image_files)
    samples = [FileSample(written.image_files[n], written.mask_files[n]) for n in names]
    with WorkerPool(2) as pool:
        batches = list(iter_validation_samples(samples, LABELS, 2, pool))
    assert [len(images) for images, _ in batches] == [2, 2, 1]
    masks = [mask for _, batch_masks in batches for mask in batch_masks]
    images = [image for batch_images, _ in batches for image in batch_images]
    for name, image, mask in zip(names, images, masks):
        assert np.array_equal(mask, written.masks[name])
        assert image.dtype == np.uint8 and image.shape == mask.shape + (3,)


def test_worker_count_defaults_to_the_cpu_count():
    assert resolve_worker_count(None) == (os.cpu_count() or 1)
    assert resolve_worker_count(3) == 3
