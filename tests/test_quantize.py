"""int8 serving: the quantization gate, the model directory it leaves, and the engine serving picks.

The slow tests share one model trained through `segmaker train` on the easy synthetic task (colour encodes
the class), so its logits are structured and confident as a real model's are; random weights would predict
one class everywhere and any quantization would "agree".
"""

import collections
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segmaker import artifacts, cli
from segmaker.environment import Paths, int8_enabled, read_serving_settings
from segmaker.errors import UserError
from segmaker.quantize import MAX_GATE_IMAGES, judge, load_samples, quantize_model_dir
from segmaker.serving.predictor import choose_engine, load_predictor
from tests.synthetic import LEARNING_HYPERPARAMETERS, write_opt_ml

REPO = Path(__file__).resolve().parents[1]


# --- the gate, by hand ----------------------------------------------------------------------------------
def test_judge_counts_agreeing_pixels_and_miou_loss_by_hand():
    labels = [np.array([[0, 0, 1, 1], [0, 0, 1, 255]], np.uint8)]
    float_masks = [np.array([[0, 0, 1, 1], [0, 0, 1, 1]], np.uint8)]
    int8_masks = [np.array([[0, 0, 1, 1], [0, 0, 1, 0]], np.uint8)]  # only the ignored pixel differs
    result = judge(float_masks, int8_masks, labels, 2)
    assert result.pixel_agreement == pytest.approx(7 / 8)  # agreement counts every pixel, ignored or not
    assert result.miou_float == pytest.approx(1.0) and result.miou_int8 == pytest.approx(1.0)
    assert not result.kept and "pixel agreement 87.50 % is below 99 %" in result.reason


def test_judge_drops_a_model_that_agrees_on_99_percent_but_loses_a_small_class():
    # 1000 pixels: class 1 is 8 pixels; int8 misses 4 of them (99.6 % agreement). IoU of class 1: 1 -> 0.5;
    # class 0: 992/992 -> 992/996. mIOU loss = (1 - (0.5 + 992/996) / 2) * 100 = 25.2 points.
    label = np.zeros((10, 100), np.uint8)
    label[0, :8] = 1
    int8 = label.copy()
    int8[0, :4] = 0
    result = judge([label.copy()], [int8], [label], 2)
    assert result.pixel_agreement == pytest.approx(0.996)
    assert result.miou_loss_points == pytest.approx(100 * (1 - (0.5 + 992 / 996) / 2))
    assert not result.kept and "mIOU drops by 25.20 points, more than 0.5" in result.reason


def test_judge_without_labels_decides_on_agreement_and_says_so():
    mask = np.zeros((10, 10), np.uint8)
    result = judge([mask], [mask], [None], 3)
    assert result.kept and result.miou_loss_points is None and "not measured" in result.reason


def test_gate_images_are_spread_over_the_whole_set(tmp_path, identity_label_map):
    files = []
    for i in range(MAX_GATE_IMAGES * 2 + 1):
        path = tmp_path / f"{i:04d}.png"
        Image.fromarray(np.full((2, 3, 3), i % 256, np.uint8)).save(str(path))
        files.append((path, None))
    samples = load_samples(files, identity_label_map)
    assert len(samples) == 43  # every third of 129
    assert [int(image[0, 0, 0]) for image, _ in samples[:3]] == [0, 3, 6]


# --- engine choice and settings -------------------------------------------------------------------------
@pytest.mark.parametrize("forced, has_onnx, gpu, has_int8, expected", [
    (None, True, None, True, "onnx-int8"),  # CPU: the int8 model when it passed the gate
    (None, True, None, False, "onnx"),
    (None, True, 0, True, "mxnet"),  # GPU: MXNet, whatever ONNX files there are
    ("onnx", True, None, True, "onnx"),
    ("onnx-int8", True, None, True, "onnx-int8"),
])
def test_choose_engine_prefers_int8_on_cpu(forced, has_onnx, gpu, has_int8, expected):
    assert choose_engine(forced, has_onnx, gpu, has_int8) == expected


def test_forcing_int8_without_the_file_is_a_user_error():
    with pytest.raises(UserError, match="SEGMAKER_ENGINE=onnx-int8 cannot be used: the model directory has no"
                                        " model.int8.onnx"):
        choose_engine("onnx-int8", True, None, False)
    assert read_serving_settings({"SEGMAKER_ENGINE": "onnx-int8"}).engine == "onnx-int8"


def test_quantize_switch_reads_auto_and_off():
    assert int8_enabled({}) and int8_enabled({"SEGMAKER_QUANTIZE": "auto"})
    assert not int8_enabled({"SEGMAKER_QUANTIZE": "off"})
    with pytest.raises(UserError, match="SEGMAKER_QUANTIZE must be auto or off, not 'no'"):
        int8_enabled({"SEGMAKER_QUANTIZE": "no"})


# --- a trained model ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(paths, training log) of a short real training run with quantization on."""
    # Two epochs: the second already scores well above all-background (measured 0.51 vs 0.29 mIOU).
    hyperparameters = dict(LEARNING_HYPERPARAMETERS, epochs=2, use_pretrained_model="False",
                           validation_mini_batch_size=2, data_workers=1, seed=3)
    paths = write_opt_ml(tmp_path_factory.mktemp("int8") / "opt_ml", num_classes=2, train=16, validation=4,
                         hyperparameters=hyperparameters)
    env = dict(os.environ, SAGEMAKER_BASE_DIR=str(paths.base), SEGMAKER_QUANTIZE="auto")
    run = subprocess.run([sys.executable, "-m", "segmaker", "train"], cwd=str(REPO), env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return paths, run.stdout + run.stderr


def validation_images(paths: Paths):
    return [np.asarray(Image.open(str(p)).convert("RGB"))
            for p in sorted(paths.channel_dir("validation").iterdir())]


@pytest.mark.slow
def test_training_keeps_an_int8_model_that_agrees_and_serving_picks_it(trained):
    """The recorded agreement is re-measured independently: both models served through load_predictor."""
    paths, log = trained
    model = artifacts.read_model_dir(paths.model_dir)
    assert model.int8_onnx_file is not None
    report = model.manifest.int8
    assert report["kept"] is True and report["images"] == 4
    assert report["pixel_agreement"] >= 0.99 and report["mIOU_loss_points"] <= 0.5
    assert "int8 model kept: pixel agreement with the float model" in log

    int8_predictor = load_predictor(paths.model_dir)
    assert int8_predictor.engine_name == "onnx-int8"
    float_predictor = load_predictor(paths.model_dir, engine="onnx")
    same = total = 0
    for image in validation_images(paths):
        a, b = float_predictor.predict_mask(image), int8_predictor.predict_mask(image)
        same += int((a == b).sum())
        total += a.size
    assert same / total == pytest.approx(report["pixel_agreement"])
    assert os.stat(str(model.int8_onnx_file)).st_mode & 0o777 == 0o644


@pytest.mark.slow
def test_onnx_runtime_runs_the_int8_model_with_int8_kernels(trained, tmp_path):
    import onnxruntime

    paths, _ = trained
    options = onnxruntime.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    onnxruntime.InferenceSession(str(paths.model_dir / "model.int8.onnx"), options,
                                 providers=["CPUExecutionProvider"])
    import onnx

    ops = collections.Counter(node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
    assert ops["QLinearConv"] >= 50 and ops["Conv"] == 0 and ops["FusedConv"] == 0


@pytest.mark.slow
def test_quantize_command_and_a_badly_calibrated_model_is_dropped(trained, tmp_path, monkeypatch, capsys):
    """Both ways on one model: `segmaker quantize` on labelled images keeps it; calibrated on inputs 200x too
    wide (so every int8 step is far too coarse) it disagrees, is dropped, and the earlier int8 file goes."""
    paths, _ = trained
    model_dir = tmp_path / "model"
    shutil.copytree(str(paths.model_dir), str(model_dir))
    (model_dir / "model.int8.onnx").unlink()
    calibration = tmp_path / "calibration"
    shutil.copytree(str(paths.channel_dir("validation")), str(calibration / "images"))
    shutil.copytree(str(paths.channel_dir("validation_annotation")), str(calibration / "masks"))

    assert cli.main(["quantize", str(model_dir), "--calibration", str(calibration)]) == 0
    assert "int8 model kept" in capsys.readouterr().out
    assert (model_dir / "model.int8.onnx").is_file()

    samples = load_samples([(calibration / "images" / p.name, calibration / "masks" / (p.stem + ".png"))
                            for p in sorted((calibration / "images").iterdir())],
                           _label_map(model_dir))
    size = artifacts.read_model_dir(model_dir).manifest.working_size
    wide = np.random.default_rng(0).standard_normal((3, size, size)).astype(np.float32) * 200
    result = quantize_model_dir(model_dir, samples, calibration=[wide])
    assert not result.kept and "below 99 %" in result.reason
    assert not (model_dir / "model.int8.onnx").exists()
    recorded = json.loads((model_dir / "segmaker.json").read_text())["int8"]
    assert recorded["kept"] is False and recorded["pixel_agreement"] == pytest.approx(result.pixel_agreement)
    assert load_predictor(model_dir).engine_name == "onnx"


def _label_map(model_dir: Path):
    from segmaker.quantize import _model_label_map

    return _model_label_map(artifacts.read_model_dir(model_dir))


def test_quantize_command_refuses_a_model_without_onnx(tmp_path, capsys):
    from tests.serving_model import write_tiny_model_dir

    model_dir = write_tiny_model_dir(tmp_path / "model", "fcn", size=32, onnx=False)
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(str(tmp_path / "images" / "a.png"))
    assert cli.main(["quantize", str(model_dir), "--calibration", str(tmp_path / "images")]) == 1
    assert not (model_dir / "model.int8.onnx").exists()
