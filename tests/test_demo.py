"""`make demo`'s promise: the bundled sample is worth looking at and its training configuration learns.

The training test runs the demo's exact hyperparameters and data (local_test/test_dir) through `segmaker
train` on the host rather than in the container (the image's Python package is the same code; the Docker
path itself is covered by tests/test_docker_image.py): validation mIOU >= 0.8 from random weights, the loss
falling, and the best model's mask of a validation picture matching its true mask.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from PIL import Image

from segmaker import cli
from segmaker.environment import Paths
from segmaker.outputs import read_metrics

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "local_test" / "test_dir"
DATA = SAMPLE / "input" / "data"


def test_the_bundled_sample_is_big_enough_to_look_at_and_small_enough_to_ship():
    pictures = sorted((DATA / "train").glob("*.jpg")) + sorted((DATA / "validation").glob("*.jpg"))
    assert len(pictures) >= 24
    classes = set()
    for picture in pictures:
        with Image.open(str(picture)) as image:
            assert min(image.size) >= 256 and image.mode == "RGB", picture
        split = picture.parent.name
        mask = Image.open(str(DATA / f"{split}_annotation" / f"{picture.stem}.png"))
        classes |= set(np.unique(np.asarray(mask)).tolist())
    assert classes == {0, 1, 2}
    assert sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file()) < 3 * 2**20
    hyperparameters = json.loads((SAMPLE / "input" / "config" / "hyperparameters.json").read_text())
    assert hyperparameters["use_pretrained_model"] == "False"  # no ImageNet weights: none can be downloaded


def test_the_sample_is_what_the_committed_generator_makes(tmp_path):
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_demo_data.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True)
    for mask in sorted(DATA.glob("*_annotation/*.png")):
        again = tmp_path / mask.parent.name / mask.name
        assert np.array_equal(np.asarray(Image.open(str(mask))), np.asarray(Image.open(str(again)))), mask


@pytest.mark.slow
def test_the_demo_configuration_learns_to_miou_0_8(tmp_path, monkeypatch):
    base = tmp_path / "opt_ml"
    shutil.copytree(str(SAMPLE), str(base))
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(base))
    assert cli.main(["train"]) == 0
    paths = Paths(base)
    records = read_metrics(paths.output_data_dir)
    assert max(r.mIOU for r in records) >= 0.8, [round(r.mIOU, 3) for r in records]
    assert records[-1].train_loss < 0.5 * records[0].train_loss, [round(r.train_loss, 3) for r in records]
    from segmaker import artifacts

    model = artifacts.read_model_dir(paths.model_dir)
    inference = artifacts.load_inference(model, [mx.cpu()])
    image = np.asarray(Image.open(str(DATA / "validation" / "validation_000.jpg")).convert("RGB"))
    truth = np.asarray(Image.open(str(DATA / "validation_annotation" / "validation_000.png")))
    (mask,) = inference.predict_masks([image])
    assert np.mean(mask == truth) >= 0.9
    assert model.manifest.names() == ["background", "sun", "box"]
