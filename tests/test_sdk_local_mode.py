"""The SageMaker Python SDK 2.x drives the image in local mode, as a user would: Estimator(...).fit() with
file:// channels, deploy(1, "local"), predict(jpeg) -> PNG mask, endpoint torn down.

The SDK lives in its own venv (.venv-sdk, tests/sdk_env.py): it needs numpy >= 1.26, MXNet < 1.24. Local
mode runs the image through docker compose exactly as SageMaker runs it (File mode), with dummy credentials
and no AWS call.
"""

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from tests.docker_helpers import REPO_ROOT, ensure_cpu_image, ensure_debian_package, free_port, run
from tests.sdk_env import sdk_python
from tests.synthetic import encode_image, make_sample, write_opt_ml

SCRIPT = REPO_ROOT / "tests" / "sdk_scripts" / "local_mode_roundtrip.py"


def _sdk_environment(home: Path) -> dict:
    """Dummy credentials and a region, a private HOME (no ~/.aws or ~/.sagemaker config), no other AWS_*."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "SAGEMAKER_"))}
    env.update(
        HOME=str(home),
        AWS_ACCESS_KEY_ID="AKIALOCALMODE0000000",
        AWS_SECRET_ACCESS_KEY="local-mode-dummy-secret",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_REGION="us-east-1",
        AWS_CONFIG_FILE=str(home / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(home / "no-aws-credentials"),
    )
    return env

TEARDOWN_SECONDS = 30


@pytest.mark.sdk
@pytest.mark.docker
@pytest.mark.slow
def test_fit_deploy_predict_in_local_mode(tmp_path):
    if run(["docker", "compose", "version"], check=False).returncode != 0:
        ensure_debian_package("docker-compose", "docker-compose")  # local mode's other way to run compose
    image = ensure_cpu_image()
    python = sdk_python()
    running_before = _running_containers(image)

    paths = write_opt_ml(tmp_path / "tree", train=6, validation=2)
    jpeg = tmp_path / "query.jpg"
    jpeg.write_bytes(encode_image(make_sample(np.random.default_rng(3), 41, 67, 3)[0]))
    work = tmp_path / "work"
    work.mkdir()

    result = run(
        [str(python), str(SCRIPT), "--image", image, "--data", str(paths.data_dir), "--work", str(work),
         "--jpeg", str(jpeg), "--port", str(free_port())],
        env=_sdk_environment(tmp_path), timeout=1500,
    )
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["mask_size"] == [67, 41]
    for name in ("model_best.params", "model_algo-1", "hyperparams.json", "segmaker.json"):
        assert name in summary["model_files"], summary["model_files"]
    # deploy's endpoint was torn down: no container of the image that this test started is left running
    # (docker compose down may take a few seconds to end it; containers of the image that were already
    # running belong to someone else on this engine).
    deadline = time.monotonic() + TEARDOWN_SECONDS
    while True:
        left = _running_containers(image) - running_before
        if not left or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not left, f"containers still running {TEARDOWN_SECONDS} s after delete_endpoint: {sorted(left)}"


def _running_containers(image: str) -> set:
    names = run(["docker", "ps", "--filter", f"ancestor={image}", "--format", "{{.Names}}"]).stdout
    return set(names.split())
