"""The SageMaker Python SDK 2.x runs a two-host `fit` in local mode (instance_count=2): docker compose starts
two containers (algo-1-xxxxx, algo-2-xxxxx) with SageMaker's /opt/ml layout and stops the whole job as soon as
one container exits: it passes only if both hosts train and neither leaves before the model is written."""

import json

import pytest

from tests.docker_helpers import REPO_ROOT, ensure_cpu_image, ensure_debian_package, free_port, run
from tests.sdk_env import sdk_python
from tests.synthetic import write_opt_ml
from tests.test_sdk_local_mode import _sdk_environment

SCRIPT = REPO_ROOT / "tests" / "sdk_scripts" / "local_mode_roundtrip.py"


@pytest.mark.sdk
@pytest.mark.docker
@pytest.mark.slow
def test_fit_with_two_instances_in_local_mode(tmp_path):
    if run(["docker", "compose", "version"], check=False).returncode != 0:
        ensure_debian_package("docker-compose", "docker-compose")
    image = ensure_cpu_image()
    python = sdk_python()
    paths = write_opt_ml(tmp_path / "tree", train=6, validation=2)
    work = tmp_path / "work"
    work.mkdir()
    result = run(
        [str(python), str(SCRIPT), "--image", image, "--data", str(paths.data_dir), "--work", str(work),
         "--jpeg", "-", "--port", str(free_port()), "--instance-count", "2", "--fit-only"],
        env=_sdk_environment(tmp_path), timeout=1500,
    )
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    for name in ("model_best.params", "model_algo-1", "hyperparams.json", "segmaker.json"):
        assert name in summary["model_files"], summary["model_files"]
