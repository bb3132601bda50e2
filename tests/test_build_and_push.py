"""build_and_push.sh against stand-ins for AWS: moto's server for STS and ECR, and a local Docker registry
(Debian's `docker-registry`) as the push target. No AWS account, no network beyond 127.0.0.1.
"""

import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Dict, Iterator

import pytest

from tests.docker_helpers import (
    REPO_ROOT,
    aws_tools_bin,
    ensure_cpu_image,
    ensure_debian_package,
    free_port,
    moto_server,
    run,
    stop_process,
    wait_for_http,
)

# Every test here needs the AWS tools venv (built from PyPI on first use); the push test needs Docker too.
pytestmark = pytest.mark.slow

SECRET = "moto-secret-never-printed-8c1f"
SCRIPT = str(REPO_ROOT / "build_and_push.sh")
# Passed through to the script: without the same CA certificates the build would miss the Docker cache.
BUILD_SETTINGS = ("PIP_CERT", "SEGMAKER_EXTRA_CA_CERTS", "DOCKER_HOST")


@pytest.fixture(scope="module")
def aws_bin() -> Path:
    return aws_tools_bin()


@pytest.fixture(scope="module")
def moto_endpoint(aws_bin, tmp_path_factory) -> Iterator[str]:
    with moto_server(tmp_path_factory.mktemp("moto")) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Iterator[str]:
    """host:port of a throw-away registry on 127.0.0.1 (Docker treats loopback registries as insecure-ok)."""
    binary = ensure_debian_package("docker-registry", "docker-registry")  # the Distribution registry
    folder = tmp_path_factory.mktemp("registry")
    port = free_port()
    config = folder / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {folder / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    log = (folder / "registry.log").open("w")
    process = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/v2/", 60, process)
        yield f"127.0.0.1:{port}"
    finally:
        stop_process(process)
        log.close()


def _script_env(aws_bin: Path, tmp_path: Path, **extra: str) -> Dict[str, str]:
    """A clean environment: the stand-ins' settings, dummy credentials, a private docker config, and what the
    image build needs from this host (the extra CA certificates, the Docker engine's address)."""
    env = {key: os.environ[key] for key in BUILD_SETTINGS if key in os.environ}
    env.update({
        "PATH": f"{aws_bin}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "DOCKER_CONFIG": str(tmp_path / "docker-config"),
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "AWS_ACCESS_KEY_ID": "AKIAMOTOTESTING00000",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_REGION": "us-east-1",
    })
    env.update(extra)
    return {key: value for key, value in env.items() if value}


@pytest.mark.docker
def test_builds_creates_the_repository_pushes_and_prints_the_uri(aws_bin, moto_endpoint, registry, tmp_path):
    ensure_cpu_image()  # the script's build then comes from Docker's cache
    env = _script_env(aws_bin, tmp_path, AWS_ENDPOINT_URL=moto_endpoint, SEGMAKER_REGISTRY=registry)
    command = [SCRIPT, "--cpu", "--weights", "skip", "--tag", "t1", "segmaker-test"]
    result = run(command, env=env, timeout=1800)
    output = result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1] == f"{registry}/segmaker-test:t1"
    assert SECRET not in output

    aws = [str(aws_bin / "aws"), "--endpoint-url", moto_endpoint, "--region", "us-east-1"]
    described = run(aws + ["ecr", "describe-repositories", "--repository-names", "segmaker-test"], env=env)
    repository = json.loads(described.stdout)["repositories"][0]
    assert repository["imageScanningConfiguration"]["scanOnPush"] is True

    with urllib.request.urlopen(f"http://{registry}/v2/_catalog") as response:
        assert "segmaker-test" in json.load(response)["repositories"]
    with urllib.request.urlopen(f"http://{registry}/v2/segmaker-test/tags/list") as response:
        assert json.load(response)["tags"] == ["t1"]


def test_missing_credentials_fail_clearly(aws_bin, moto_endpoint, tmp_path):
    env = _script_env(aws_bin, tmp_path, AWS_ENDPOINT_URL=moto_endpoint, AWS_ACCESS_KEY_ID="",
                      AWS_SECRET_ACCESS_KEY="")
    result = run([SCRIPT, "--cpu", "segmaker-test"], env=env, check=False, timeout=120)
    assert result.returncode != 0
    assert "credentials" in result.stderr and "Traceback" not in result.stderr


def test_missing_region_and_missing_cli_fail_clearly(aws_bin, tmp_path):
    no_region = run([SCRIPT, "x"], env=_script_env(aws_bin, tmp_path, AWS_REGION=""), check=False)
    assert no_region.returncode != 0 and "no AWS region" in no_region.stderr

    system_path = "/usr/sbin:/usr/bin:/sbin:/bin"
    if shutil.which("aws", path=system_path):
        pytest.skip("an AWS CLI is installed system-wide")
    no_cli = run([SCRIPT, "x"], env=dict(_script_env(aws_bin, tmp_path), PATH=system_path), check=False)
    assert no_cli.returncode != 0 and "AWS CLI is not installed" in no_cli.stderr


def test_rejects_an_invalid_repository_name(aws_bin, tmp_path):
    result = run([SCRIPT, "Not_Valid!"], env=_script_env(aws_bin, tmp_path), check=False)
    assert result.returncode != 0 and "invalid repository name" in result.stderr
