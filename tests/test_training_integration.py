"""Real training runs on tiny synthetic data, through the `segmaker train` command as SageMaker runs it."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segmaker import cli
from segmaker.environment import Paths
from segmaker.outputs import read_metrics
from tests.synthetic import LEARNING_HYPERPARAMETERS, all_background_miou, write_opt_ml, write_split

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
FAST = {
    "use_pretrained_model": "False",
    "crop_size": 32,
    "base_size": 48,
    "epochs": 1,
    "mini_batch_size": 2,
    "validation_mini_batch_size": 2,
    "data_workers": 1,
    "seed": 3,
}
MODEL_FILES = ("model_best.params", "model_algo-1", "hyperparams.json", "segmaker.json")


def train_in_process(monkeypatch, paths: Paths, **environ) -> int:
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(paths.base))
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    return cli.main(["train"])


def failure(paths: Paths) -> str:
    return paths.failure_file.read_text()


# psp runs at native scale: crops at the images' own resolution, validation by sliding tiles (up to 96 px
# images, 48 px tiles), the scale recorded for serving.
@pytest.mark.parametrize("algorithm, image_scale", [("fcn", "base_size"), ("psp", "native"),
                                                    ("deeplab", "base_size")])
def test_each_algorithm_trains_and_validates_at_non_square_sizes(tmp_path, monkeypatch, algorithm,
                                                                 image_scale):
    paths = write_opt_ml(tmp_path, train=4, validation=3,
                         hyperparameters=dict(FAST, algorithm=algorithm, image_scale=image_scale))
    sizes = {Image.open(str(p)).size for p in paths.channel_dir("validation").iterdir()}
    assert all(width != height for width, height in sizes)  # validation images are never square

    assert train_in_process(monkeypatch, paths) == 0, failure(paths)
    (record,) = read_metrics(paths.output_data_dir)
    assert 0.0 <= record.mIOU <= 1.0 and 0.0 < record.pixel_accuracy <= 1.0
    assert all((paths.model_dir / name).is_file() for name in MODEL_FILES)
    manifest = json.loads((paths.model_dir / "segmaker.json").read_text())
    assert (manifest["algorithm"], manifest["image_scale"]) == (algorithm, image_scale)


def test_two_cpu_devices_split_each_batch(tmp_path, monkeypatch, capsys):
    paths = write_opt_ml(tmp_path, train=8, validation=2, hyperparameters=dict(FAST, mini_batch_size=4))
    assert train_in_process(monkeypatch, paths, SEGMAKER_CPU_DEVICES="2") == 0, failure(paths)
    out = capsys.readouterr().out
    assert "on cpu(0), cpu(1): 8 training samples, 2 iterations per epoch of 4 images" in out
    assert "#quality_metric. host: algo-1, epoch: 0, validation mIOU: " in out


def test_syncbn_trains_on_two_cpu_devices_through_segmaker_train(tmp_path):
    """`segmaker train` exports MXNet's engine settings for SyncBatchNorm before MXNet loads (in this
    test process MXNet is already loaded, hence a process of its own) and trains with it: without them the
    job would refuse (test_training_setup.py) or could deadlock (the timeout)."""
    paths = write_opt_ml(tmp_path, train=8, validation=2,
                         hyperparameters=dict(FAST, mini_batch_size=4, syncbn="True"))
    process = run_segmaker(paths, {"SEGMAKER_CPU_DEVICES": "2"})
    out, _ = process.communicate(timeout=600)
    assert process.returncode == 0, out[-3000:]
    assert "syncbn: BatchNorm statistics over the 2 devices' images (SyncBatchNorm)" in out
    assert "#quality_metric. host: algo-1, epoch: 0, validation mIOU: " in out


@pytest.fixture(scope="module", autouse=True)
def learning_job(tmp_path_factory):
    """The learning run, the module's longest job, started in a process of its own before the module's first
    test: training keeps about one CPU core busy, so on two cores it runs while the other tests do.
    (paths, process, start time); the process's output goes to a file nobody needs to read meanwhile."""
    hyperparameters = dict(FAST, **LEARNING_HYPERPARAMETERS)
    root = tmp_path_factory.mktemp("learning")
    paths = write_opt_ml(root / "opt_ml", num_classes=2, train=16, validation=4,
                         hyperparameters=hyperparameters)
    with (root / "train.log").open("w") as output:
        process = run_segmaker(paths, stdout=output)
    try:
        yield paths, process, time.monotonic()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_short_run_learns_the_easy_task(learning_job):
    """Colour encodes the class: a working loop gets far above the all-background mIOU in under 2 minutes.

    From random weights (no ImageNet weights here) a dilated ResNet-50 needs ~100 small steps; Adam at
    1e-3 with batches of 2 gets there reliably (measured: best mIOU 0.52-0.60 vs 0.30 for all background).
    """
    paths, process, started = learning_job
    assert process.wait(timeout=900) == 0, (paths.base.parent / "train.log").read_text()[-3000:]
    seconds = time.monotonic() - started
    records = read_metrics(paths.output_data_dir)
    baseline = all_background_miou(paths)
    best = max(r.mIOU for r in records)
    print(f"learning run: {seconds:.0f} s beside the other tests, best mIOU {best:.3f}, all-background mIOU"
          f" {baseline:.3f}")
    assert best > baseline + 0.15
    assert records[-1].train_loss < 0.7 * records[0].train_loss
    manifest = json.loads((paths.model_dir / "segmaker.json").read_text())
    assert manifest["best_mIOU"] == pytest.approx(best)


def run_segmaker(paths: Paths, env_extra=None, stdout=subprocess.PIPE) -> subprocess.Popen:
    env = dict(os.environ, SAGEMAKER_BASE_DIR=str(paths.base), PYTHONUNBUFFERED="1", **(env_extra or {}))
    return subprocess.Popen(
        [sys.executable, "-m", "segmaker", "train"],
        cwd=str(REPO),
        env=env,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(predicate, timeout: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None:
            raise AssertionError("segmaker exited early:\n" + process.stdout.read())
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("timed out:\n" + process.stdout.read())
        time.sleep(0.2)


def test_sigterm_saves_a_checkpoint_and_a_restart_resumes(tmp_path):
    paths = write_opt_ml(tmp_path, train=12, validation=2, hyperparameters=dict(FAST, epochs=3))
    paths.checkpoints_dir.mkdir()
    first = run_segmaker(paths)
    wait_for(lambda: any(paths.checkpoints_dir.glob("checkpoint-*")), 300, first)
    first.send_signal(signal.SIGTERM)
    first_log, _ = first.communicate(timeout=120)
    assert first.returncode == cli.EXIT_STOPPED, first_log
    assert not paths.failure_file.exists()
    assert (paths.model_dir / "model_best.params").is_file()  # the best model so far is saved on SIGTERM
    assert "validation mIOU" in first_log and "epoch: 2," not in first_log

    second = run_segmaker(paths)
    second_log, _ = second.communicate(timeout=600)
    assert second.returncode == 0, second_log
    assert "Resuming from checkpoint" in second_log
    assert "epoch: 0, train loss" not in second_log  # epoch 0 is not trained again
    assert [r.epoch for r in read_metrics(paths.output_data_dir)] == [0, 1, 2]
    assert len(list(paths.checkpoints_dir.glob("checkpoint-*"))) == 2


def test_undecodable_image_fails_naming_the_file(tmp_path, monkeypatch):
    paths = write_opt_ml(tmp_path, train=4, validation=0, hyperparameters=FAST)
    broken = sorted(paths.channel_dir("train").iterdir())[1]
    broken.write_bytes(b"\xff\xd8 not really a JPEG")
    assert train_in_process(monkeypatch, paths) == cli.EXIT_USER_ERROR
    assert broken.name in failure(paths)
    assert "Traceback" not in failure(paths)


def test_mask_value_without_class_fails_naming_file_and_value(tmp_path, monkeypatch):
    paths = write_opt_ml(tmp_path, train=4, validation=0, hyperparameters=FAST)
    mask_file = sorted(paths.channel_dir("train_annotation").iterdir())[0]
    mask = np.array(Image.open(str(mask_file)))
    mask[0, 0] = 7  # 3 classes: 7 is no class id and not 255
    Image.fromarray(mask).save(str(mask_file))
    assert train_in_process(monkeypatch, paths) == cli.EXIT_USER_ERROR
    assert mask_file.name in failure(paths) and "7" in failure(paths)


def test_batch_larger_than_the_data_fails_naming_the_key(tmp_path, monkeypatch):
    paths = write_opt_ml(tmp_path, train=3, validation=0, hyperparameters=dict(FAST, mini_batch_size=4))
    assert train_in_process(monkeypatch, paths) == cli.EXIT_USER_ERROR
    assert "mini_batch_size" in failure(paths)


def remap_masks(mask_dir: Path, pixel_of_class: dict) -> None:
    table = np.arange(256, dtype=np.uint8)
    for class_id, pixel in pixel_of_class.items():
        table[class_id] = pixel
    for path in mask_dir.iterdir():
        Image.fromarray(table[np.asarray(Image.open(str(path)))]).save(str(path))


def test_a_job_shaped_like_the_builtin_leaves_every_artifact(tmp_path):
    """String hyperparameters, four channels + label_map, a {"map": ...} with 255 borders, assorted JPEGs."""
    paths = Paths(tmp_path)
    pixel_of_class = {0: 10, 1: 20, 2: 30}
    for split, count, seed in (("train", 6, 0), ("validation", 3, 1)):
        image_dir, mask_dir = paths.channel_dir(split), paths.channel_dir(split + "_annotation")
        write_split(image_dir, mask_dir, count, seed=seed, ignore_border=True)
        remap_masks(mask_dir, pixel_of_class)
    label_maps = paths.channel_dir("label_map")
    label_maps.mkdir(parents=True)
    for split in ("train", "validation"):
        label_map = {"map": {str(k): v for k, v in pixel_of_class.items()}}
        (label_maps / f"{split}_label_map.json").write_text(json.dumps(label_map))
    paths.config_dir.mkdir(parents=True)
    hyperparameters = dict(FAST, num_classes=3, backbone="resnet-50", algorithm="fcn", epochs=2,
                           class_names="background,red,green")
    paths.hyperparameters_file.write_text(json.dumps({k: str(v) for k, v in hyperparameters.items()}))
    channels = ("train", "train_annotation", "validation", "validation_annotation", "label_map")
    config = {
        name: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated"} for name in channels
    }
    paths.input_data_config_file.write_text(json.dumps(config))

    process = run_segmaker(paths)
    log, _ = process.communicate(timeout=600)
    assert process.returncode == 0, log
    model = sorted(p.name for p in paths.model_dir.iterdir())
    for name in MODEL_FILES + ("model-symbol.json", "model-0000.params", "model.onnx"):
        assert name in model, (name, model)
    assert json.loads((paths.model_dir / "hyperparams.json").read_text())["num_classes"] == 3
    outputs = sorted(p.name for p in paths.output_data_dir.iterdir())
    assert outputs == ["confusion_matrix.csv", "confusion_matrix.png", "metrics.csv", "metrics.json",
                       "report.html", "training_curves.png", "validation_predictions.png"]
    records = read_metrics(paths.output_data_dir)
    assert [r.epoch for r in records] == [0, 1]
    assert "#progress_metric: host=algo-1, completed 100 % of epochs" in log
    # Per-class scores under the class names: in the log, the CSV columns and the model's manifest.
    assert "Epoch 1 validation per class:" in log and "\ngreen " in log
    header = (paths.output_data_dir / "metrics.csv").read_text().splitlines()[0]
    assert header.endswith("IoU_background,IoU_red,IoU_green,Dice_background,Dice_red,Dice_green")
    assert len(records[1].iou_per_class) == 3
    assert json.loads((paths.model_dir / "segmaker.json").read_text())["class_names"] == ["background", "red",
                                                                                          "green"]


def test_pretrained_channel_then_incremental_training_from_the_model(tmp_path, monkeypatch, capsys):
    import mxnet as mx
    from gluoncv.model_zoo import get_model

    from segmaker.models import pretrained_file_name

    first = write_opt_ml(
        tmp_path / "first", train=4, validation=2, hyperparameters=dict(FAST, use_pretrained_model="True")
    )
    backbone = get_model("resnet50_v1s", pretrained=False)
    backbone.initialize()
    backbone(mx.nd.zeros((1, 3, 32, 32)))
    first.channel_dir("pretrained").mkdir()
    backbone.save_parameters(str(first.channel_dir("pretrained") / pretrained_file_name("resnet50")))
    assert train_in_process(monkeypatch, first) == 0, failure(first)
    assert "Starting the backbone from ImageNet weights" in capsys.readouterr().out

    second = write_opt_ml(tmp_path / "second", train=4, validation=2, hyperparameters=FAST)
    shutil.copytree(str(first.model_dir), str(second.channel_dir("model")))
    assert train_in_process(monkeypatch, second) == 0, failure(second)
    assert "Incremental training: starting from" in capsys.readouterr().out

    other = write_opt_ml(tmp_path / "other", num_classes=4, train=4, validation=0, hyperparameters=FAST)
    shutil.copytree(str(first.model_dir), str(other.channel_dir("model")))
    assert train_in_process(monkeypatch, other) == cli.EXIT_USER_ERROR
    assert "num_classes is 3 in the model but 4" in failure(other)
