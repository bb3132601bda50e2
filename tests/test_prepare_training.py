"""What `segmaker prepare` writes trains: each dataset's stand-in (published layout, junk included), prepared,
then trained from random weights through `segmaker train` past a learning bar.

The Oxford-IIIT Pet run also proves that trimaps train as they are with the ignore-aware label map
({"map": {"0": 2, "1": 1}, "ignore": [3]}): `prepare` copies them byte for byte (tests/test_prepare.py).
Kept short: tiny images, a few dozen Adam steps; the bar is well above what predicting one class scores.
The three `segmaker train` jobs start together (each its own process, as SageMaker runs it) and each test
waits for its own: a job this small keeps about one CPU core busy (it trains as fast with OMP_NUM_THREADS=1),
so on two cores they overlap (measured on a shared machine: 114 s one after the other, 87 s together).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segmaker import cli
from segmaker.environment import Paths
from segmaker.outputs import read_metrics
from tests.fresh_process import BackgroundProcess
from tests.standins import write_folders, write_kitti_road, write_oxford_pets

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]

TRAINING = {"use_pretrained_model": "False", "crop_size": "48", "base_size": "48", "epochs": "8",
            "mini_batch_size": "2", "validation_mini_batch_size": "4", "optimizer": "adam",
            "learning_rate": "0.001", "seed": "1", "data_workers": "1"}


class TrainingJob(BackgroundProcess):
    """`segmaker train` on prepared channels, as SageMaker would get them, running in its own process."""

    def __init__(self, prepared: Path, base: Path):
        self.paths = Paths(base)
        channels = sorted(p.name for p in prepared.iterdir() if p.is_dir() and p.name != "manifests")
        for channel in channels:
            shutil.copytree(str(prepared / channel), str(self.paths.channel_dir(channel)))
        self.paths.config_dir.mkdir(parents=True)
        hyperparameters = json.loads((prepared / "hyperparameters.json").read_text())
        self.paths.hyperparameters_file.write_text(json.dumps(dict(hyperparameters, **TRAINING)))
        self.paths.input_data_config_file.write_text(
            json.dumps({c: {"TrainingInputMode": "File"} for c in channels}))
        self.log = base.parent / f"{base.name}.log"
        env = dict(os.environ, SAGEMAKER_BASE_DIR=str(base), PYTHONPATH=os.pathsep.join(sys.path))
        with self.log.open("w") as log:  # a file, not a pipe: nobody reads a pipe while the other jobs run
            self.process = subprocess.Popen([sys.executable, "-m", "segmaker", "train"], cwd=str(REPO),
                                            env=env, stdout=log, stderr=subprocess.STDOUT)

    def finished(self) -> Paths:
        """The job's Paths once it has ended well."""
        code = self.wait(900)
        failure = self.paths.failure_file.read_text() if self.paths.failure_file.exists() else ""
        assert code == 0, failure + self.log.read_text()[-3000:]
        return self.paths


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """Each stand-in (published layout, junk included) prepared by `segmaker prepare`, then its training job
    started: {name: (the prepared folder, the job)}."""
    root = tmp_path_factory.mktemp("prepared")
    write_oxford_pets(root / "pets", per_list=(16, 6))
    write_kitti_road(root / "kitti", counts={"um": 8, "umm": 6, "uu": 6}, size=(36, 60))
    write_folders(root / "tiles", count=20)
    tiles = root / "tiles"
    preparations = {
        "pets": ["oxford-pets", root / "pets", root / "pets-out"],
        "kitti": ["kitti-road", root / "kitti", root / "kitti-out", "--validation-fraction", "0.25"],
        "folders": ["folders", "--images", tiles / "images", "--masks", tiles / "masks", root / "folders-out",
                    "--class-names", "background,road"],
    }
    for arguments in preparations.values():
        assert cli.main(["prepare", *map(str, arguments)]) == 0
    started = {}
    try:
        for name in preparations:
            started[name] = (root / f"{name}-out", TrainingJob(root / f"{name}-out", root / f"{name}-job"))
        yield started
    finally:
        for _, job in started.values():
            job.stop()


def one_class_miou(mask_dir: Path, label_of=lambda m: m) -> float:
    """The best mIOU a constant prediction scores on these masks (the share of the commonest class over the
    number of classes present): the bar is set well above it."""
    pixels = np.concatenate([label_of(np.asarray(Image.open(str(p)))).ravel() for p in mask_dir.iterdir()])
    pixels = pixels[pixels != 255]
    values, counts = np.unique(pixels, return_counts=True)
    return float(counts.max() / counts.sum()) / len(values)


def assert_learned(paths: Paths, baseline: float) -> None:
    records = read_metrics(paths.output_data_dir)
    print("mIOU by epoch", [round(r.mIOU, 3) for r in records], "baseline", round(baseline, 3),
          "loss", [round(r.train_loss, 3) for r in records])
    best = max(r.mIOU for r in records)
    assert best >= max(0.6, baseline + 0.25), ([round(r.mIOU, 3) for r in records], baseline)
    assert records[-1].train_loss < 0.7 * records[0].train_loss, [r.train_loss for r in records]


def test_oxford_pets_prepared_trimaps_train(jobs):
    prepared, job = jobs["pets"]
    paths = job.finished()
    trimap = {1: 1, 2: 0, 3: 255}
    baseline = one_class_miou(prepared / "validation_annotation", lambda m: np.vectorize(trimap.get)(m))
    assert_learned(paths, baseline)
    manifest = json.loads((paths.model_dir / "segmaker.json").read_text())
    assert manifest["class_names"] == ["background", "pet"]
    assert manifest["label_map"] == {"map": {"0": 2, "1": 1}, "ignore": [3]}


def test_kitti_road_prepared_trains(jobs):
    prepared, job = jobs["kitti"]
    assert_learned(job.finished(), one_class_miou(prepared / "validation_annotation"))


def test_folders_of_0_255_masks_prepared_train(jobs):
    prepared, job = jobs["folders"]
    assert_learned(job.finished(), one_class_miou(prepared / "validation_annotation", lambda m: m // 255))
