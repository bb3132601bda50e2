"""docs/RECIPES.md's SDK scripts (examples/*.py), run as written, in SageMaker local mode, on small stand-ins
of each dataset in its own layout prepared by `segmaker prepare`.

One local-mode run per example, tiny: -H overrides make each job one epoch on 32-pixel crops from random
weights (no ImageNet weights here), and the satellite recipe's DeepLab uses ResNet-50 instead of ResNet-101
to keep CI short. Only the Oxford-IIIT Pet recipe (the endpoint recipe) deploys; the others only train
(--no-endpoint).
read_report.py then fetches one job's outputs. What each proves: the script runs end to end against the real
SDK 2.x and the image, the job's per-class IoU/Dice reach the script's summary, and (pets) the endpoint's JSON
mask has the query image's size.

The four scripts start together (each its own SDK process, work folder, containers and port) and each test
waits for its own: a tiny job keeps about one CPU core busy at a time (imports, one MXNet engine thread, then
the SDK gzipping model.tar.gz), so on two cores they overlap (measured on a shared machine: 202 s one after
the other, 165 s together).
"""

import json
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from segmaker import cli
from tests.docker_helpers import REPO_ROOT, ensure_cpu_image, ensure_debian_package, free_port, run
from tests.fresh_process import BackgroundProcess
from tests.sdk_env import sdk_python
from tests.standins import write_folders, write_kitti_road, write_oxford_pets
from tests.synthetic import write_opt_ml
from tests.test_sdk_local_mode import _sdk_environment

pytestmark = [pytest.mark.sdk, pytest.mark.docker, pytest.mark.slow]

# The int8 quantization after training (tests/test_quantize.py covers it) would add ~40 s to every job.
TINY = ["-H", "epochs=1", "-H", "use_pretrained_model=False", "-H", "crop_size=32", "-H", "base_size=48",
        "-H", "mini_batch_size=2", "-H", "validation_mini_batch_size=2", "-H", "early_stopping=False",
        "-E", "SEGMAKER_QUANTIZE=off"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The image, the SDK's python and the prepared stand-ins, made once for the module."""
    if run(["docker", "compose", "version"], check=False).returncode != 0:
        ensure_debian_package("docker-compose", "docker-compose")
    root = tmp_path_factory.mktemp("recipes")
    write_oxford_pets(root / "pets-source", per_list=(4, 2))
    write_kitti_road(root / "kitti-source", counts={"um": 2, "uu": 2})
    write_folders(root / "tiles", count=5)
    for args in (["oxford-pets", root / "pets-source", root / "pets"],
                 ["kitti-road", root / "kitti-source", root / "kitti", "--validation-fraction", "0.5"],
                 ["folders", "--images", root / "tiles" / "images", "--masks", root / "tiles" / "masks",
                  root / "roads", "--class-names", "background,road", "--validation-fraction", "0.4"]):
        assert cli.main(["prepare", *map(str, args)]) == 0
    builtin = write_opt_ml(root / "builtin", train=4, validation=2).data_dir  # the built-in's four channels
    return {"image": ensure_cpu_image(), "python": sdk_python(), "root": root, "builtin": builtin}


class Example(BackgroundProcess):
    """One recipe script running in the background; `summary()` waits for it and reads its last line."""

    def __init__(self, setup, script: str, data: Path, *extra: str):
        self.script = script
        work = setup["root"] / f"work-{script}"
        work.mkdir()
        self.output = setup["root"] / f"{script}.out"
        self.errors = setup["root"] / f"{script}.err"
        command = [str(setup["python"]), str(REPO_ROOT / "examples" / script), "--image", setup["image"],
                   "--data", str(data), "--local", "--work", str(work), "--port", str(free_port()), *extra]
        # Files, not pipes: nobody reads a pipe while the other jobs run, and a full one would block.
        with self.output.open("w") as output, self.errors.open("w") as errors:
            self.process = subprocess.Popen(command, env=_sdk_environment(work), stdout=output, stderr=errors,
                                            cwd=str(REPO_ROOT / "examples"))

    def summary(self) -> dict:
        code = self.wait(1200)
        output = self.output.read_text()
        assert code == 0, f"{self.script} exited {code}:\n{(output + self.errors.read_text())[-6000:]}"
        return json.loads(output.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def examples(setup):
    """The four recipe jobs, started at once (see the module's docstring), by script name."""
    runs = (
        ("oxford_pets_fcn.py", setup["root"] / "pets", ()),
        ("kitti_road_fcn.py", setup["root"] / "kitti", ("--no-endpoint",)),
        ("satellite_roads_deeplab.py", setup["root"] / "roads",
         ("-H", "backbone=resnet-50", "--no-endpoint")),
        ("switch_from_builtin.py", setup["builtin"],
         ("-H", "num_classes=3", "-H", "use_pretrained_model=False", "--no-endpoint")),
    )
    started = {}
    try:
        for script, data, extra in runs:
            started[script] = Example(setup, script, data, *TINY, *extra)
        yield started
    finally:
        for example in started.values():
            example.stop()


def test_oxford_pets_fcn_recipe_trains_deploys_and_reports_per_class_scores(setup, examples):
    pets = setup["root"] / "pets"
    summary = examples["oxford_pets_fcn.py"].summary()
    assert set(summary["iou_per_class"]) == {"background", "pet"} and summary["epochs"] == 1
    assert 0 <= summary["mIOU"] <= 1 and set(summary["dice_per_class"]) == {"background", "pet"}
    query = sorted((pets / "validation").iterdir())[0]
    width, height = Image.open(str(query)).size
    assert summary["prediction"]["shape"] == [height, width]
    # Looking at the plots: the report of that job, fetched by the recipe's script.
    report_dir = setup["root"] / "report"
    work = setup["root"] / "work-report"
    work.mkdir()
    result = run([str(setup["python"]), str(REPO_ROOT / "examples" / "read_report.py"), "--model-data",
                  summary["model_data"], "--to", str(report_dir)], env=_sdk_environment(work), timeout=300,
                 cwd=str(REPO_ROOT / "examples"))
    files = json.loads(result.stdout.strip().splitlines()[-1])["files"]
    assert {"report.html", "metrics.csv", "confusion_matrix.png", "training_curves.png"} <= set(files)
    assert "Per-class scores (epoch 0)" in (report_dir / "report.html").read_text()


def test_kitti_road_fcn_recipe_trains(examples):
    summary = examples["kitti_road_fcn.py"].summary()
    assert set(summary["iou_per_class"]) == {"not_road", "road"}


def test_satellite_roads_deeplab_recipe_trains_from_folders(examples):
    summary = examples["satellite_roads_deeplab.py"].summary()
    assert set(summary["iou_per_class"]) == {"background", "road"}


def test_switch_from_builtin_recipe_runs_the_builtin_hyperparameters(examples):
    summary = examples["switch_from_builtin.py"].summary()
    assert len(summary["iou_per_class"]) == 3 and summary["epochs"] == 1
