"""`segmaker train` in Pipe mode, end to end: pipe-feed writes the FIFOs, the training reads them.

These run the real training loop on tiny data (CPU), so they are marked slow.
"""

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from segmaker.data.pipe_feed import manifest_lines_for_folders, write_pipe_input_config
from segmaker.environment import Paths
from segmaker.outputs import read_metrics
from tests.synthetic import LEARNING_HYPERPARAMETERS, all_background_miou, write_opt_ml, write_split

pytestmark = pytest.mark.slow

TRAIN_SAMPLES = 16
# The File-mode learning run's task and settings (tests/test_training_integration.py), so both modes are held
# to the same bar.
HYPERPARAMETERS = dict(
    LEARNING_HYPERPARAMETERS,
    use_pretrained_model="False",
    algorithm="fcn",
    num_training_samples=str(TRAIN_SAMPLES),
    validation_mini_batch_size="2",
    seed="3",
    data_workers="1",
)


def pipe_job(tmp_path: Path, epochs: int) -> Paths:
    """An /opt/ml tree whose train channel is in Pipe mode (validation stays in File mode) + its manifest."""
    paths = write_opt_ml(
        tmp_path / "opt_ml",
        num_classes=2,
        train=0,
        validation=4,
        hyperparameters=dict(HYPERPARAMETERS, epochs=str(epochs)),
    )
    data = tmp_path / "train_data"  # outside the tree: in Pipe mode the channel has no files
    write_split(data / "images", data / "masks", TRAIN_SAMPLES, num_classes=2, seed=0)
    lines = manifest_lines_for_folders(data / "images", data / "masks", "segmentation-ref")
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    write_pipe_input_config(paths, "train")
    return paths


def move_validation_to_pipe_mode(tmp_path: Path, paths: Paths) -> Path:
    """Take the validation files out of the tree into a manifest, as a Pipe-mode channel has no files."""
    data = tmp_path / "validation_data"
    shutil.move(str(paths.channel_dir("validation")), str(data / "images"))
    shutil.move(str(paths.channel_dir("validation_annotation")), str(data / "masks"))
    lines = manifest_lines_for_folders(data / "images", data / "masks", "segmentation-ref")
    manifest = tmp_path / "validation.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    write_pipe_input_config(paths, "validation")
    return manifest


def start_feeder(
    tmp_path: Path, paths: Paths, epochs: int, *extra: str, manifest: str = "train.jsonl",
    stdout=subprocess.PIPE,
) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "segmaker.data.pipe_feed",
            "--manifest",
            str(tmp_path / manifest),
            "--base-dir",
            str(paths.base),
            "--epochs",
            str(epochs),
            "--reader-timeout",
            "300",
            *extra,
        ],
        stdout=stdout,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run_training(paths: Paths) -> subprocess.CompletedProcess:
    env = dict(os.environ, SAGEMAKER_BASE_DIR=str(paths.base))
    return subprocess.run(
        [sys.executable, "-m", "segmaker", "train"], env=env, capture_output=True, text=True, timeout=900
    )


def metric_values(log: str, name: str) -> List[float]:
    return [float(v) for v in re.findall(rf"epoch: \d+, {name}: ([0-9.]+)", log)]


@pytest.fixture(scope="module", autouse=True)
def learning_job(tmp_path_factory):
    """The Pipe-mode learning run, the module's longest job (its feeder and `segmaker train`), started before
    the module's first test and checked by its last: training keeps about one CPU core busy, so on two cores
    it runs while the other tests do. (paths, training process, feeder process, the folder of their logs)."""
    root = tmp_path_factory.mktemp("pipe_learning")
    epochs = LEARNING_HYPERPARAMETERS["epochs"]
    paths = pipe_job(root, epochs)
    # Logs to files, not pipes: nobody reads a pipe while the other tests run.
    with (root / "feeder.log").open("w") as feeder_log, (root / "train.log").open("w") as training_log:
        feeder = start_feeder(root, paths, epochs, "--split-records-over", "700", stdout=feeder_log)
        training = subprocess.Popen([sys.executable, "-m", "segmaker", "train"], stdout=training_log,
                                    stderr=subprocess.STDOUT,
                                    env=dict(os.environ, SAGEMAKER_BASE_DIR=str(paths.base)))
    try:
        yield paths, training, feeder, root
    finally:
        for process in (training, feeder):
            if process.poll() is None:
                process.kill()
                process.wait()


def test_train_and_validation_both_in_pipe_mode(tmp_path):
    """Each channel has its own FIFO per epoch (train_0, validation_0, train_1, ...) and its own writer."""
    epochs = 2
    paths = pipe_job(tmp_path, epochs)
    move_validation_to_pipe_mode(tmp_path, paths)
    channels = json.loads(paths.input_data_config_file.read_text())
    assert channels["train"]["TrainingInputMode"] == channels["validation"]["TrainingInputMode"] == "Pipe"
    feeders = [
        start_feeder(tmp_path, paths, epochs),
        start_feeder(tmp_path, paths, epochs, "--channel", "validation", manifest="validation.jsonl"),
    ]
    try:
        result = run_training(paths)
    finally:
        logs = []
        for feeder in feeders:
            feeder.kill()
            logs.append(feeder.communicate()[0])
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:] + "\n--- pipe-feed:\n" + "\n".join(logs)
    assert len(metric_values(log, "validation mIOU")) == epochs
    assert f"validation_{epochs - 1}: wrote 8 records" in logs[1]  # 4 validation images, each image + mask
    assert (paths.model_dir / "model_best.params").exists()


def test_file_mode_training_with_pipe_mode_validation(tmp_path):
    hyperparameters = dict(HYPERPARAMETERS, epochs="1")
    del hyperparameters["num_training_samples"]  # File mode derives it from the files
    paths = write_opt_ml(
        tmp_path / "opt_ml", num_classes=2, train=4, validation=4, hyperparameters=hyperparameters
    )
    move_validation_to_pipe_mode(tmp_path, paths)
    feeder = start_feeder(tmp_path, paths, 1, "--channel", "validation", manifest="validation.jsonl")
    try:
        result = run_training(paths)
    finally:
        feeder.kill()
        feeder_log = feeder.communicate()[0]
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:] + "\n--- pipe-feed:\n" + feeder_log
    assert "4 training samples" in log and len(metric_values(log, "validation mIOU")) == 1
    assert "validation_0: wrote 8 records" in feeder_log


def test_a_broken_stream_fails_training_with_the_record_and_offset(tmp_path):
    paths = pipe_job(tmp_path, epochs=1)
    # A plain file stands in for the FIFO: two good pairs, then a record cut off inside its payload.
    first = json.loads((tmp_path / "train.jsonl").read_text().splitlines()[0])
    image, mask = Path(first["source-ref"]).read_bytes(), Path(first["segmentation-ref"]).read_bytes()
    good = (_record(image) + _record(mask)) * 2
    paths.pipe_path("train", 0).write_bytes(good + _record(image)[:50])
    result = run_training(paths)
    assert result.returncode != 0
    reason = paths.failure_file.read_text()
    assert f"train_0: record 4 at byte offset {len(good)}" in reason, reason
    assert "ends inside the payload" in reason


def _record(payload: bytes) -> bytes:
    return struct.pack("<II", 0xCED7230A, len(payload)) + payload + b"\0" * (-len(payload) % 4)


# Last in the module: its job ran while the tests above did.
def test_pipe_mode_training_learns_beside_file_mode_validation(learning_job):
    paths, training, feeder, root = learning_job
    epochs = LEARNING_HYPERPARAMETERS["epochs"]
    try:
        code = training.wait(timeout=900)
    finally:
        feeder.kill()  # no-op when it finished; frees it when training read fewer epochs
        feeder.wait()
    log, feeder_log = (root / "train.log").read_text(), (root / "feeder.log").read_text()
    assert code == 0, log[-3000:] + "\n--- pipe-feed:\n" + feeder_log
    assert len(metric_values(log, "validation mIOU")) == epochs  # validation read from files
    records = read_metrics(paths.output_data_dir)
    assert max(r.mIOU for r in records) > all_background_miou(paths) + 0.15  # the File-mode run's bar
    assert records[-1].train_loss < 0.7 * records[0].train_loss
    assert (paths.model_dir / "model_best.params").exists()
    assert f"train_{epochs - 1}: wrote {2 * TRAIN_SAMPLES} records" in feeder_log
