"""What `segmaker prepare` writes trains: each dataset's stand-in (published layout, junk included), prepared,
then trained from random weights through `segmaker train` past a learning bar.

The Oxford-IIIT Pet run also proves that trimaps train as they are with the ignore-aware label map
({"map": {"0": 2, "1": 1}, "ignore": [3]}): `prepare` copies them byte for byte (tests/test_prepare.py).
Kept short: tiny images, a few dozen Adam steps; the bar is well above what predicting one class scores.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segmaker import cli
from segmaker.environment import Paths
from segmaker.outputs import read_metrics
from tests.standins import write_folders, write_kitti_road, write_oxford_pets

pytestmark = pytest.mark.slow

TRAINING = {"use_pretrained_model": "False", "crop_size": "48", "base_size": "48", "epochs": "8",
            "mini_batch_size": "2", "validation_mini_batch_size": "4", "optimizer": "adam",
            "learning_rate": "0.001", "seed": "1", "data_workers": "1"}


def train_prepared(prepared: Path, base: Path, monkeypatch) -> Paths:
    """Train on the prepared channels as SageMaker would get them; the job's Paths."""
    paths = Paths(base)
    channels = sorted(p.name for p in prepared.iterdir() if p.is_dir() and p.name != "manifests")
    for channel in channels:
        shutil.copytree(str(prepared / channel), str(paths.channel_dir(channel)))
    paths.config_dir.mkdir(parents=True)
    hyperparameters = json.loads((prepared / "hyperparameters.json").read_text())
    paths.hyperparameters_file.write_text(json.dumps(dict(hyperparameters, **TRAINING)))
    paths.input_data_config_file.write_text(json.dumps({c: {"TrainingInputMode": "File"} for c in channels}))
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(base))
    assert cli.main(["train"]) == 0, paths.failure_file.read_text() if paths.failure_file.exists() else ""
    return paths


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


def test_oxford_pets_prepared_trimaps_train(tmp_path, monkeypatch):
    write_oxford_pets(tmp_path / "pets", per_list=(16, 6))
    assert cli.main(["prepare", "oxford-pets", str(tmp_path / "pets"), str(tmp_path / "out")]) == 0
    paths = train_prepared(tmp_path / "out", tmp_path / "job", monkeypatch)
    trimap = {1: 1, 2: 0, 3: 255}
    baseline = one_class_miou(tmp_path / "out" / "validation_annotation",
                              lambda m: np.vectorize(trimap.get)(m))
    assert_learned(paths, baseline)
    manifest = json.loads((paths.model_dir / "segmaker.json").read_text())
    assert manifest["class_names"] == ["background", "pet"]
    assert manifest["label_map"] == {"map": {"0": 2, "1": 1}, "ignore": [3]}


def test_kitti_road_prepared_trains(tmp_path, monkeypatch):
    write_kitti_road(tmp_path / "kitti", counts={"um": 8, "umm": 6, "uu": 6}, size=(36, 60))
    assert cli.main(["prepare", "kitti-road", str(tmp_path / "kitti"), str(tmp_path / "out"),
                     "--validation-fraction", "0.25"]) == 0
    paths = train_prepared(tmp_path / "out", tmp_path / "job", monkeypatch)
    assert_learned(paths, one_class_miou(tmp_path / "out" / "validation_annotation"))


def test_folders_of_0_255_masks_prepared_train(tmp_path, monkeypatch):
    write_folders(tmp_path / "tiles", count=20)
    tiles = tmp_path / "tiles"
    assert cli.main(["prepare", "folders", "--images", str(tiles / "images"), "--masks", str(tiles / "masks"),
                     str(tmp_path / "out"), "--class-names", "background,road"]) == 0
    paths = train_prepared(tmp_path / "out", tmp_path / "job", monkeypatch)
    assert_learned(paths, one_class_miou(tmp_path / "out" / "validation_annotation", lambda m: m // 255))
