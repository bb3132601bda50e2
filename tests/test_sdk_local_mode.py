"""The SageMaker Python SDK 2.x drives the image in local mode, as a user would: Estimator(...).fit() with
file:// channels, deploy(1, "local"), predict(jpeg) -> PNG mask, endpoint torn down.

The SDK lives in its own venv (.venv-sdk, tests/sdk_env.py): it needs numpy >= 1.26, MXNet < 1.24. Local
mode runs the image through docker compose exactly as SageMaker runs it (File mode), with dummy credentials
and no AWS call.

Also a two-host `fit` (instance_count=2): docker compose starts two containers (algo-1-xxxxx, algo-2-xxxxx)
with SageMaker's /opt/ml layout and stops the whole job as soon as one container exits, so it passes only if
both hosts train and neither leaves before the model is written.

The two jobs start together (each its own SDK process, work folder and containers) and each test waits for
its own: a tiny local-mode job keeps about one CPU core busy at a time (imports, one MXNet engine thread, the
SDK gzipping model.tar.gz), so on two cores they overlap.
"""

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.docker_helpers import REPO_ROOT, ensure_cpu_image, ensure_debian_package, free_port, run
from tests.fresh_process import BackgroundProcess
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
pytestmark = [pytest.mark.sdk, pytest.mark.docker, pytest.mark.slow]


class Job(BackgroundProcess):
    """tests/sdk_scripts/local_mode_roundtrip.py running in the background, in the SDK's environment."""

    def __init__(self, python: Path, folder: Path, image: str, *arguments: str, train: int):
        paths = write_opt_ml(folder / "tree", train=train, validation=2)
        work = folder / "work"
        work.mkdir(parents=True)
        self.output, self.errors = folder / "job.out", folder / "job.err"
        command = [str(python), str(SCRIPT), "--image", image, "--data", str(paths.data_dir), "--work",
                   str(work), "--port", str(free_port()), *arguments]
        # Files, not pipes: nobody reads a pipe while the other job runs, and a full one would block.
        with self.output.open("w") as output, self.errors.open("w") as errors:
            self.process = subprocess.Popen(command, env=_sdk_environment(folder), stdout=output,
                                            stderr=errors)

    def summary(self) -> dict:
        """The script's JSON summary once it has ended well."""
        code = self.wait(1500)
        output = self.output.read_text()
        errors = self.errors.read_text()
        assert code == 0, f"local_mode_roundtrip.py exited {code}:\n{(output + errors)[-6000:]}"
        return json.loads(output.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """{"one host": fit, deploy, predict a 67 x 41 JPEG; "two hosts": fit only}, started at once."""
    if run(["docker", "compose", "version"], check=False).returncode != 0:
        ensure_debian_package("docker-compose", "docker-compose")  # local mode's other way to run compose
    image = ensure_cpu_image()
    python = sdk_python()
    root = tmp_path_factory.mktemp("sdk")
    jpeg = root / "query.jpg"
    jpeg.write_bytes(encode_image(make_sample(np.random.default_rng(3), 41, 67, 3)[0]))
    running_before = _running_containers(image)  # others' on this engine (a shared machine)
    started = {}
    try:
        started["one host"] = Job(python, root / "one-host", image, "--jpeg", str(jpeg), train=6)
        started["two hosts"] = Job(python, root / "two-hosts", image, "--jpeg", "-", "--instance-count", "2",
                                   "--fit-only", train=6)
        yield image, running_before, started
    finally:
        for job in started.values():
            job.stop()


def test_fit_deploy_predict_in_local_mode(jobs):
    image, running_before, started = jobs
    summary = started["one host"].summary()
    assert summary["mask_size"] == [67, 41]
    for name in ("model_best.params", "model_algo-1", "hyperparams.json", "segmaker.json"):
        assert name in summary["model_files"], summary["model_files"]
    # deploy's endpoint was torn down: no container of the image that this module started is left running
    # once the two-host job has ended too (docker compose down may take a few seconds to end one; containers
    # of the image that were already running belong to someone else on this engine).
    started["two hosts"].wait(1500)
    deadline = time.monotonic() + TEARDOWN_SECONDS
    while True:
        left = _running_containers(image) - running_before
        if not left or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not left, f"containers still running {TEARDOWN_SECONDS} s after delete_endpoint: {sorted(left)}"


def test_fit_with_two_instances_in_local_mode(jobs):
    _, _, started = jobs
    summary = started["two hosts"].summary()
    for name in ("model_best.params", "model_algo-1", "hyperparams.json", "segmaker.json"):
        assert name in summary["model_files"], summary["model_files"]


def _running_containers(image: str) -> set:
    names = run(["docker", "ps", "--filter", f"ancestor={image}", "--format", "{{.Names}}"]).stdout
    return set(names.split())
