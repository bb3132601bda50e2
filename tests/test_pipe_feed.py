"""The local Pipe-mode emulator (pipe-feed) and make-manifest, end to end through real FIFOs."""

import importlib.util
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List

import pytest

from segmaker.data import pipe_feed
from segmaker.data.pipe import PipeChannel
from segmaker.data.pipe_feed import (
    Fetcher,
    ManifestLine,
    line_payloads,
    parse_manifest,
    resolve_attribute_names,
)
from segmaker.environment import Paths, read_input_data_config
from segmaker.errors import DataError, UserError


def make_folders(root: Path, count: int, image_size: int = 1000) -> List[bytes]:
    """images/ and masks/ with `count` pairs of arbitrary bytes; returns the image contents in name order."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    contents = []
    for i in range(count):
        image = os.urandom(image_size + i)  # lengths that are and are not multiples of 4
        (root / "images" / f"img{i:02d}.jpg").write_bytes(image)
        (root / "masks" / f"img{i:02d}.png").write_bytes(b"mask %d" % i)
        contents.append(image)
    return contents


def make_manifest(root: Path) -> Path:
    manifest = root / "train.jsonl"
    argv = ["--images", str(root / "images"), "--masks", str(root / "masks")]
    assert pipe_feed.manifest_main(argv + ["--label-attribute", "city-streets-ref", "-o", str(manifest)]) == 0
    return manifest


class Feeder:
    """Runs `pipe-feed` in a thread, as a separate process would run beside the training."""

    def __init__(self, argv: List[str]):
        self.error = None
        self.thread = threading.Thread(target=self._run, args=(argv,), daemon=True)
        self.thread.start()

    def _run(self, argv):
        try:
            pipe_feed.main(argv)
        except BaseException as exc:  # reported to the test
            self.error = exc

    def join(self) -> None:
        self.thread.join(20)
        assert not self.thread.is_alive(), "pipe-feed is still running"
        if self.error:
            raise self.error


# --- manifests ------------------------------------------------------------------------------------------
def test_make_manifest_pairs_images_and_masks_by_base_name(tmp_path):
    make_folders(tmp_path, 3)
    lines = make_manifest(tmp_path).read_text().splitlines()
    assert len(lines) == 3
    first = json.loads(lines[0])
    assert first == {
        "source-ref": str((tmp_path / "images" / "img00.jpg").resolve()),
        "city-streets-ref": str((tmp_path / "masks" / "img00.png").resolve()),
    }


def test_make_manifest_names_images_without_masks_and_masks_without_images(tmp_path):
    make_folders(tmp_path, 2)
    (tmp_path / "images" / "extra.jpg").write_bytes(b"x")
    (tmp_path / "masks" / "orphan.png").write_bytes(b"y")
    with pytest.raises(DataError, match=r"extra\.jpg has no mask .*orphan\.png has no image"):
        make_manifest(tmp_path)


def test_make_manifest_wants_a_ref_label_attribute(tmp_path):
    make_folders(tmp_path, 1)
    argv = ["--images", str(tmp_path / "images"), "--masks", str(tmp_path / "masks")]
    with pytest.raises(UserError, match="must end in '-ref'"):
        pipe_feed.manifest_main(argv + ["--label-attribute", "labels", "-o", str(tmp_path / "m.jsonl")])


def test_parse_manifest_names_the_bad_line():
    with pytest.raises(DataError, match="m.jsonl line 3 is not valid JSON"):
        parse_manifest('{"a": 1}\n\n{oops\n', "m.jsonl")
    with pytest.raises(DataError, match="line 1 must be a JSON object"):
        parse_manifest("[1, 2]\n", "m.jsonl")
    with pytest.raises(DataError, match="has no lines"):
        parse_manifest("\n", "m.jsonl")


def test_label_attribute_is_found_or_asked_for():
    one = [ManifestLine(1, {"source-ref": "a", "roads-ref": "b", "roads-ref-metadata": {}})]
    assert resolve_attribute_names(one, None, "m") == ["source-ref", "roads-ref"]
    assert resolve_attribute_names(one, ["x-ref", "y-ref"], "m") == ["x-ref", "y-ref"]
    two = [ManifestLine(1, {"source-ref": "a", "roads-ref": "b", "cars-ref": "c"})]
    with pytest.raises(UserError, match="--attribute-names"):
        resolve_attribute_names(two, None, "m")


def test_line_payloads_fetch_refs_relative_to_the_manifest_and_send_other_values_as_text(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"IMAGE")
    line = ManifestLine(4, {"source-ref": "a.jpg", "class": {"id": 2}, "name": "road"})
    fetcher = Fetcher(tmp_path)
    assert line_payloads(line, ["source-ref", "class", "name"], fetcher, "m") == [
        b"IMAGE",
        b'{"id": 2}',
        b"road",
    ]
    with pytest.raises(DataError, match="m line 4 has no attribute 'mask-ref'"):
        line_payloads(line, ["source-ref", "mask-ref"], fetcher, "m")
    with pytest.raises(DataError, match="cannot read .*missing.png"):
        fetcher.fetch("missing.png")


@pytest.mark.skipif(importlib.util.find_spec("boto3") is not None, reason="boto3 is installed here")
def test_s3_refs_without_boto3_say_what_to_install(tmp_path):
    with pytest.raises(UserError, match="install boto3"):
        Fetcher(tmp_path).fetch("s3://bucket/key.jpg")


# --- feeding FIFOs --------------------------------------------------------------------------------------
def test_feed_writes_each_epoch_into_its_fifo_and_the_reader_gets_every_pair(tmp_path):
    images = make_folders(tmp_path / "data", 4, image_size=3000)
    manifest = make_manifest(tmp_path / "data")
    base = tmp_path / "ml"
    argv = ["--manifest", str(manifest), "--base-dir", str(base), "--epochs", "2", "--write-input-config"]
    feeder = Feeder(argv + ["--split-records-over", "1000", "--reader-timeout", "20"])
    paths = Paths(base)
    for epoch in (0, 1):
        samples = list(PipeChannel(paths, "train", wait_seconds=20).epoch(epoch))
        assert [s.image for s in samples] == images  # split records (cflag 1/2/3) joined again
        assert [s.mask for s in samples] == [b"mask %d" % i for i in range(4)]
    feeder.join()
    config = read_input_data_config(paths)["train"]
    assert config.is_pipe and config.record_wrapper_type == "RecordIO"


def test_next_fifo_appears_only_after_the_previous_one_was_written_to_the_end(tmp_path):
    # 8 x 300 kB: far more than a pipe buffers plus what the reading thread holds (one queued sample, one
    # waiting to be queued, a read buffer).
    make_folders(tmp_path / "data", 8, image_size=300_000)
    manifest = make_manifest(tmp_path / "data")
    paths = Paths(tmp_path / "ml")
    feeder = Feeder(["--manifest", str(manifest), "--base-dir", str(paths.base), "--epochs", "2"])
    samples = PipeChannel(paths, "train", wait_seconds=20, queue_samples=1).epoch(0)
    next(samples)
    time.sleep(0.3)
    assert not paths.pipe_path("train", 1).exists()
    assert len(list(samples)) == 7
    assert len(list(PipeChannel(paths, "train", wait_seconds=20).epoch(1))) == 8
    feeder.join()


def test_a_reader_that_stops_early_ends_that_epoch_and_feeding_goes_on(tmp_path, caplog):
    make_folders(tmp_path / "data", 4, image_size=300_000)
    manifest = make_manifest(tmp_path / "data")
    paths = Paths(tmp_path / "ml")
    with caplog.at_level(logging.INFO, logger="segmaker.data.pipe_feed"):
        feeder = Feeder(["--manifest", str(manifest), "--base-dir", str(paths.base), "--epochs", "2"])
        samples = PipeChannel(paths, "train", wait_seconds=20).epoch(0)
        next(samples)
        samples.close()
        assert len(list(PipeChannel(paths, "train", wait_seconds=20).epoch(1))) == 4
        feeder.join()
    assert "train_0: the reader closed the FIFO" in caplog.text


def test_feed_gives_up_when_no_reader_comes(tmp_path):
    make_folders(tmp_path / "data", 1)
    manifest = make_manifest(tmp_path / "data")
    argv = ["--manifest", str(manifest), "--base-dir", str(tmp_path / "ml"), "--epochs", "1"]
    with pytest.raises(UserError, match=r"no reader opened .*train_0 within 0.2 s"):
        pipe_feed.main(argv + ["--reader-timeout", "0.2"])


def test_a_regular_file_in_the_fifos_place_is_refused(tmp_path):
    make_folders(tmp_path / "data", 1)
    manifest = make_manifest(tmp_path / "data")
    (tmp_path / "ml" / "input" / "data").mkdir(parents=True)
    (tmp_path / "ml" / "input" / "data" / "train_0").write_bytes(b"")
    with pytest.raises(UserError, match="train_0 exists and is not a FIFO"):
        pipe_feed.main(["--manifest", str(manifest), "--base-dir", str(tmp_path / "ml"), "--epochs", "1"])


def test_runs_as_a_module_and_reports_user_errors_without_a_traceback(tmp_path):
    make_folders(tmp_path, 1)
    module = [sys.executable, "-m", "segmaker.data.pipe_feed"]
    ok = subprocess.run(
        module
        + [
            "make-manifest",
            "--images",
            str(tmp_path / "images"),
            "--masks",
            str(tmp_path / "masks"),
            "--label-attribute",
            "roads-ref",
            "-o",
            str(tmp_path / "m.jsonl"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "m.jsonl").read_text())["roads-ref"].endswith("img00.png")
    bad = subprocess.run(
        module + ["--manifest", str(tmp_path / "nope.jsonl"), "--epochs", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert "error: cannot read" in bad.stderr and "nope.jsonl" in bad.stderr and "Traceback" not in bad.stderr


def test_pipe_input_config_keeps_other_channels_in_file_mode_and_drops_the_annotation_channel(tmp_path):
    paths = Paths(tmp_path)
    for channel in ("train", "train_annotation", "validation", "validation_annotation"):
        paths.channel_dir(channel).mkdir(parents=True)
    pipe_feed.write_pipe_input_config(paths, "train")
    channels = read_input_data_config(paths)
    assert sorted(channels) == ["train", "validation", "validation_annotation"]
    assert channels["train"].is_pipe and not channels["validation"].is_pipe
