"""Helpers for the tests that drive the image like a user: build it once, run containers, wait for servers.

The CPU image is built on the local Debian base (docker/make_base_image.sh) by the same script `make image`
uses, without baked weights (they cannot be downloaded here), so the tests exercise the real build path.
"""

import contextlib
import functools
import http.client
import os
import shutil
import socket
import subprocess
import time
import urllib.request
import venv
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# SEGMAKER_TEST_IMAGE lets work trees built side by side on one engine keep their own tag.
CPU_IMAGE = os.environ.get("SEGMAKER_TEST_IMAGE", "segmaker:cpu")
# Tools that must never share the mxnet venv (awscli and moto pin botocore and need numpy-free resolution).
AWS_TOOLS_VENV = REPO_ROOT / ".venv-aws"
AWS_TOOLS = ("awscli>=1.32,<2", "moto[server]>=5,<6")


def run(
    args: Sequence[str], *, timeout: float = 1800, check: bool = True, **kwargs
) -> subprocess.CompletedProcess:
    """Run a command, capturing its output; on failure the assertion message carries the output's tail."""
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        output = (result.stdout + result.stderr)[-6000:]
        raise AssertionError("{} exited {}:\n{}".format(" ".join(map(str, args)), result.returncode, output))
    return result


def require_docker() -> None:
    """Skip (with the reason) where there is no Docker engine at all; CI has one, so there these tests run."""
    if shutil.which("docker") is None:
        pytest.skip("docker is not installed")
    if run(["docker", "info"], check=False, timeout=60).returncode != 0:
        pytest.skip("the Docker engine is not running")


# Memoised (not a fixture) so that every test module shares one build per session: pytest would create a
# separate session fixture per module that imports it.
@functools.lru_cache(maxsize=None)
def ensure_cpu_image(tag: str = CPU_IMAGE) -> str:
    """Make the local base image if missing, then (re)build the CPU image; reruns hit Docker's cache."""
    require_docker()
    run([str(REPO_ROOT / "docker" / "make_base_image.sh")])
    run([str(REPO_ROOT / "docker" / "build_image.sh"), "--cpu", "--weights", "skip", "--tag", tag])
    return tag


def ensure_debian_package(package: str, binary: str) -> str:
    """The path of `binary`, installing Debian's `package` with apt-get first when it is missing (CI runs as
    root on a fresh Debian machine); skip where that is impossible."""
    found = shutil.which(binary)
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        install = ["apt-get", "install", "-y", "--no-install-recommends", package]
        if run(install, check=False, env=env).returncode != 0:
            run(["apt-get", "update"], env=env)  # a fresh machine may have no package lists yet
            run(install, env=env)
        found = shutil.which(binary)
    if found is None:
        pytest.skip(f"{binary} is not installed (apt-get install {package})")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_request(
    port: int, method: str, path: str, body: Optional[bytes] = None, headers: Optional[dict] = None,
    timeout: float = 60,
) -> Tuple[int, dict, bytes]:
    """(status, headers, body) of one request to 127.0.0.1:port."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def wait_until_pinged(port: int, timeout: float, container: Optional[str] = None) -> None:
    """Poll GET /ping until 200; fail early (with the container's log) if the container has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if http_request(port, "GET", "/ping", timeout=5)[0] == 200:
                return
        except (OSError, http.client.HTTPException):
            pass
        if container and not container_running(container):
            raise AssertionError(f"container {container} exited:\n{container_logs(container)}")
        time.sleep(1)
    raise AssertionError(f"no 200 from /ping on port {port} within {timeout} s")


def container_running(name: str) -> bool:
    result = run(["docker", "inspect", "-f", "{{.State.Running}}", name], check=False, timeout=60)
    return result.returncode == 0 and result.stdout.strip() == "true"


def container_logs(name: str) -> str:
    result = run(["docker", "logs", "--tail", "80", name], check=False, timeout=60)
    return result.stdout + result.stderr


def remove_container(name: str) -> None:
    run(["docker", "rm", "-f", name], check=False, timeout=120)


def docker_run_args(
    image: str, *args: str, volumes: Sequence[str] = (), env: Sequence[str] = ()
) -> List[str]:
    """`docker run --rm` with -v/-e options, then the image and its arguments."""
    command = ["docker", "run", "--rm"]
    for volume in volumes:
        command += ["-v", volume]
    for variable in env:
        command += ["-e", variable]
    return command + [image, *args]


def python_venv(path: Path, requirements: Sequence[str]) -> Path:
    """A virtualenv at `path` with `requirements` installed (reused when its marker says so); its bin dir."""
    marker = path / ".segmaker-installed"
    wanted = "\n".join(requirements)
    if marker.exists() and marker.read_text() == wanted:
        return path / "bin"
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    run([str(path / "bin" / "python"), "-m", "pip", "install", "--quiet", *requirements], timeout=1800)
    marker.write_text(wanted)
    return path / "bin"


def aws_tools_bin() -> Path:
    """The bin dir of .venv-aws (the AWS CLI and moto's server), created on first use."""
    return python_venv(AWS_TOOLS_VENV, AWS_TOOLS)


def wait_for_http(url: str, timeout: float, process: subprocess.Popen) -> None:
    """Poll `url` until anything answers; fail early when `process` (the server) has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{process.args[0]} exited with {process.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"nothing answered {url} within {timeout} s")


def stop_process(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def moto_server(log_dir: Path) -> Iterator[str]:
    """moto's server (stand-in for S3, STS, ECR, ...) on a free loopback port; yields its endpoint URL."""
    port = free_port()
    with (log_dir / "moto.log").open("w") as log:
        process = subprocess.Popen([str(aws_tools_bin() / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_http(f"http://127.0.0.1:{port}/moto-api/", 60, process)
            yield f"http://127.0.0.1:{port}"
        finally:
            stop_process(process)
