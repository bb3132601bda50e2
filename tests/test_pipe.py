"""Pipe mode reading: pairs of records -> samples, FIFO per epoch, sharding, shuffle buffer, early stop."""

import os
import random
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List

import pytest

from segmaker.data.pipe import PipeChannel, shuffle_buffered, take_shard, wait_for_fifo
from segmaker.environment import Paths
from segmaker.errors import DataError, UserError


def encode_part(cflag: int, payload: bytes) -> bytes:
    """The wire format spelled out independently of segmaker.data.recordio."""
    header = struct.pack("<II", 0xCED7230A, (cflag << 29) | len(payload))
    return header + payload + b"\x00" * (-len(payload) % 4)


def stream_of_pairs(count: int) -> bytes:
    return b"".join(encode_part(0, b"img%d" % i) + encode_part(0, b"mask%d" % i) for i in range(count))


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    (tmp_path / "input" / "data").mkdir(parents=True)
    return Paths(tmp_path)


def write_epoch_file(paths: Paths, channel: str, epoch: int, data: bytes) -> Path:
    path = paths.pipe_path(channel, epoch)
    path.write_bytes(data)
    return path


def test_records_pair_up_as_image_then_mask(paths):
    write_epoch_file(paths, "train", 0, stream_of_pairs(3))
    samples = list(PipeChannel(paths, "train").epoch(0))
    assert [(s.image, s.mask) for s in samples] == [(b"img%d" % i, b"mask%d" % i) for i in range(3)]
    assert samples[1].name == "train_0 record 2 (byte offset 28)"  # 12 + 16 bytes per pair
    assert samples[1].mask_name == "train_0 record 3 (byte offset 40)"


def test_each_epoch_reads_its_own_fifo_name(paths):
    write_epoch_file(paths, "validation", 0, stream_of_pairs(1))
    write_epoch_file(paths, "validation", 1, stream_of_pairs(2))
    channel = PipeChannel(paths, "validation")
    assert [len(list(channel.epoch(e))) for e in (0, 1)] == [1, 2]


def test_an_odd_record_count_names_the_unpaired_record(paths):
    data = stream_of_pairs(2) + encode_part(0, b"lonely image")
    write_epoch_file(paths, "train", 0, data)
    samples = PipeChannel(paths, "train").epoch(0)
    assert len([next(samples), next(samples)]) == 2  # the complete pairs arrive before the error
    with pytest.raises(DataError, match=r"train_0: record 4 at byte offset 56 has no mask record"):
        next(samples)


def test_a_framing_error_names_the_fifo(paths):
    write_epoch_file(paths, "train", 0, stream_of_pairs(1) + b"garbage!")
    with pytest.raises(DataError, match=r"train_0: record 2 at byte offset 28: bad magic"):
        list(PipeChannel(paths, "train").epoch(0))


def test_missing_fifo_times_out_with_a_clear_error(paths):
    started = time.monotonic()
    with pytest.raises(UserError, match=r"train_3 \(channel 'train', epoch 3\) did not appear within 0.2 s"):
        list(PipeChannel(paths, "train", wait_seconds=0.2).epoch(3))
    assert time.monotonic() - started < 5


def test_a_folder_where_the_fifo_should_be_is_reported(paths):
    paths.pipe_path("train", 0).mkdir()
    with pytest.raises(UserError, match="neither a FIFO nor a file"):
        wait_for_fifo(paths.pipe_path("train", 0), "train", 0, 1.0)


def test_waits_for_a_fifo_that_appears_later(paths):
    def create_later():
        time.sleep(0.3)
        write_epoch_file(paths, "train", 1, stream_of_pairs(2))

    thread = threading.Thread(target=create_later)
    thread.start()
    try:
        assert len(list(PipeChannel(paths, "train", wait_seconds=10).epoch(1))) == 2
    finally:
        thread.join()


def test_sharding_gives_each_rank_every_world_size_th_pair(paths):
    write_epoch_file(paths, "train", 0, stream_of_pairs(7))
    shards = [[s.image for s in PipeChannel(paths, "train", rank=r, world_size=3).epoch(0)] for r in range(3)]
    assert shards == [[b"img0", b"img3", b"img6"], [b"img1", b"img4"], [b"img2", b"img5"]]
    assert list(take_shard(range(5), 1, 2)) == [1, 3]


def test_invalid_rank_is_refused(paths):
    with pytest.raises(ValueError, match="rank 2"):
        PipeChannel(paths, "train", rank=2, world_size=2)


def test_shuffle_buffer_is_seeded_complete_and_differs_per_epoch(paths):
    for epoch in (0, 1):
        write_epoch_file(paths, "train", epoch, stream_of_pairs(40))
    channel = PipeChannel(paths, "train", shuffle_buffer=8, seed=7)
    first = [s.image for s in channel.epoch(0)]
    assert sorted(first) == sorted(b"img%d" % i for i in range(40))
    assert first != [b"img%d" % i for i in range(40)]
    assert first == [s.image for s in channel.epoch(0)]  # same seed and epoch: same order
    second = [int(s.image[3:]) for s in channel.epoch(1)]
    assert second != [int(s[3:]) for s in first]


def test_shuffle_buffer_bounds_how_far_items_move_ahead():
    # An item can only come out after at most buffer_size - 1 later items went in before it.
    out = list(shuffle_buffered(range(100), 5, random.Random(1)))
    assert sorted(out) == list(range(100))
    assert all(out.index(i) >= i - 4 for i in range(100))
    assert list(shuffle_buffered(range(10), 0, random.Random(1))) == list(range(10))


def _feed_in_background(path: Path, chunks: List[bytes], errors: List[BaseException]) -> threading.Thread:
    def feed():
        try:
            with open(path, "wb") as fifo:
                for chunk in chunks:
                    fifo.write(chunk)
                    fifo.flush()
        except BaseException as exc:  # the test inspects what the writer saw
            errors.append(exc)

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    return thread


def test_reads_a_real_fifo_written_in_small_pieces(paths):
    path = paths.pipe_path("train", 0)
    os.mkfifo(path)
    data = stream_of_pairs(20)
    chunks = [data[i : i + 7] for i in range(0, len(data), 7)]  # headers and payloads torn apart
    errors: List[BaseException] = []
    writer = _feed_in_background(path, chunks, errors)
    assert [s.mask for s in PipeChannel(paths, "train").epoch(0)] == [b"mask%d" % i for i in range(20)]
    writer.join(5)
    assert not writer.is_alive() and errors == []


def test_stopping_early_unblocks_the_writer_with_a_broken_pipe(paths):
    path = paths.pipe_path("train", 0)
    os.mkfifo(path)
    big = encode_part(0, b"x" * 200_000) + encode_part(0, b"m" * 1000)
    errors: List[BaseException] = []
    writer = _feed_in_background(path, [big] * 50, errors)  # ~10 MB: far more than the pipe holds
    samples = PipeChannel(paths, "train").epoch(0)
    assert next(samples).mask == b"m" * 1000
    samples.close()  # the training loop leaving the epoch early
    writer.join(10)
    assert not writer.is_alive(), "the writer is still blocked on the FIFO"
    assert len(errors) == 1 and isinstance(errors[0], BrokenPipeError)


# --- the background reading thread ----------------------------------------------------------------------
def _pipe_threads() -> List[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("segmaker-pipe-")]


@pytest.fixture(autouse=True)
def no_reading_thread_outlives_its_test():
    yield
    deadline = time.monotonic() + 5
    while _pipe_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _pipe_threads() == [], "a Pipe-mode reading thread was leaked"


def test_the_fifo_is_read_ahead_while_the_consumer_is_busy(paths):
    """Reading overlaps the consumer: with ~2 MB of pairs (more than the pipe plus one read chunk hold), the
    writer finishes while the consumer still holds the first sample; a foreground reader would block it."""
    path = paths.pipe_path("train", 0)
    os.mkfifo(path)
    pair = encode_part(0, b"i" * 100_000) + encode_part(0, b"m" * 100)
    errors: List[BaseException] = []
    writer = _feed_in_background(path, [pair] * 20, errors)
    samples = PipeChannel(paths, "train").epoch(0)
    next(samples)
    writer.join(10)
    assert not writer.is_alive() and errors == []
    assert len(list(samples)) == 19


def test_stopping_while_the_writer_is_silent_unblocks_the_thread(paths):
    """The writer keeps the FIFO open but sends nothing more: closing the iterator must not leave the thread
    blocked in a read (the autouse fixture checks it is gone), and the writer's next write gets EPIPE."""
    path = paths.pipe_path("train", 0)
    os.mkfifo(path)
    go_on = threading.Event()
    errors: List[BaseException] = []

    def silent_writer():
        try:
            with open(path, "wb", buffering=0) as fifo:
                fifo.write(stream_of_pairs(1))
                go_on.wait(10)
                fifo.write(stream_of_pairs(1))
        except BaseException as exc:
            errors.append(exc)

    writer = threading.Thread(target=silent_writer, daemon=True)
    writer.start()
    samples = PipeChannel(paths, "train").epoch(0)
    assert next(samples).image == b"img0"
    started = time.monotonic()
    samples.close()
    assert time.monotonic() - started < 2
    assert _pipe_threads() == []
    go_on.set()
    writer.join(5)
    assert len(errors) == 1 and isinstance(errors[0], BrokenPipeError)


def test_stopping_while_the_queue_is_full_ends_the_thread(paths):
    path = paths.pipe_path("train", 0)
    os.mkfifo(path)
    errors: List[BaseException] = []
    pair = encode_part(0, b"i" * 50_000) + encode_part(0, b"m" * 100)
    writer = _feed_in_background(path, [pair] * 200, errors)  # 10 MB: the writer cannot finish on its own
    samples = PipeChannel(paths, "train", queue_samples=2).epoch(0)
    next(samples)
    time.sleep(0.2)  # the thread fills the queue and waits to put the next pair
    samples.close()
    assert _pipe_threads() == []
    writer.join(5)
    assert not writer.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], BrokenPipeError)


def test_a_writer_killed_mid_record_fails_the_consumer_with_record_and_offset(paths, capfd):
    """The error happens in the reading thread; it must reach the consumer (after the complete pairs),
    naming the record and byte offset, and nothing may be printed by the thread."""
    path = paths.pipe_path("train", 0)
    os.mkfifo(path)
    data = stream_of_pairs(2) + encode_part(0, b"an image cut short")[:15]
    script = (
        "import sys, time\n"
        "with open(sys.argv[1], 'wb', buffering=0) as fifo:\n"
        "    fifo.write(bytes.fromhex(sys.argv[2]))\n"
        "    time.sleep(60)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", script, str(path), data.hex()])
    try:
        samples = PipeChannel(paths, "train").epoch(0)
        assert [next(samples).image, next(samples).image] == [b"img0", b"img1"]
        writer.kill()
        with pytest.raises(DataError, match=r"train_0: record 4 at byte offset 56: the stream ends inside the"
                                            r" payload \(7 of 18 bytes\)"):
            next(samples)
    finally:
        writer.kill()
        writer.wait()
    assert capfd.readouterr().err == ""


def test_closing_before_the_first_sample_and_after_the_end_is_harmless(paths):
    write_epoch_file(paths, "train", 0, stream_of_pairs(3))
    samples = PipeChannel(paths, "train").epoch(0)
    samples.close()  # never started: nothing was opened
    finished = PipeChannel(paths, "train").epoch(0)
    assert len(list(finished)) == 3
    finished.close()
