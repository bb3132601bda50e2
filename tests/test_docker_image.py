"""The image, driven as SageMaker and users drive it: `docker run IMAGE train|serve` on an /opt/ml tree.

Also the build helper in container/ that fetches the weights (a fast test, no Docker). The lock files the
image installs from are held against pyproject.toml in test_locks.py, and against the image's packages here.
"""

import io
import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator, List, Tuple

import numpy as np
import pytest
from packaging.utils import canonicalize_name
from PIL import Image

from tests.docker_helpers import (
    REPO_ROOT,
    container_logs,
    docker_run_args,
    ensure_cpu_image,
    free_port,
    http_request,
    remove_container,
    run,
    wait_until_pinged,
)
from tests.lockfiles import LOCKS, read_lock, target_python
from tests.synthetic import encode_image, make_sample, write_opt_ml

MAX_CPU_IMAGE_BYTES = 1.5e9
# Small and quick on two shared CPU cores, but a real network and a real epoch with validation.
TINY_TRAINING = {
    "use_pretrained_model": "False",
    "algorithm": "fcn",
    "epochs": "1",
    "crop_size": "32",
    "base_size": "48",
    "mini_batch_size": "2",
    "validation_mini_batch_size": "2",
}

# ---- the container/ build helpers (no Docker) ----


def _load_container_script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "container" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fake_model_repo(tmp_path: Path) -> Iterator[str]:
    """An HTTP model repository whose resnet50_v1s zip holds bytes with the wrong SHA-1."""
    folder = tmp_path / "repo" / "gluon" / "models"
    folder.mkdir(parents=True)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("resnet50_v1s-25a187fa.params", b"not the real weights")
    (folder / "resnet50_v1s-25a187fa.zip").write_bytes(buffer.getvalue())
    handler = partial(SimpleHTTPRequestHandler, directory=str(tmp_path / "repo"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_weight_fetch_refuses_a_file_with_the_wrong_sha1(fake_model_repo, tmp_path, capsys):
    fetch = _load_container_script("fetch_pretrained_weights")
    dest = tmp_path / "models"
    assert fetch.main(["--repo-url", fake_model_repo, str(dest), "resnet50_v1s"]) == 1
    message = capsys.readouterr().err
    assert "resnet50_v1s" in message and "hash" in message.lower()
    assert "PRETRAINED_WEIGHTS=skip" in message


# ---- the image ----


@pytest.fixture(scope="module")
def cpu_image() -> str:
    return ensure_cpu_image()


def _inspect(image: str) -> dict:
    return json.loads(run(["docker", "image", "inspect", image]).stdout)[0]


@pytest.mark.docker
@pytest.mark.slow
def test_image_contract(cpu_image):
    info = _inspect(cpu_image)
    config = info["Config"]
    assert config["Entrypoint"] == ["segmaker"]
    assert config["Labels"]["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"
    assert "8080/tcp" in config["ExposedPorts"]
    assert info["Size"] <= MAX_CPU_IMAGE_BYTES, f"CPU image is {info['Size'] / 1e9:.2f} GB"
    probe = (
        "import os, importlib.metadata as meta, mxnet, numpy, segmaker.cli;"
        "print(mxnet.__version__, numpy.__version__, meta.version('gluoncv'));"
        "print(os.path.exists('/opt/ml'), os.path.isdir(os.environ['MXNET_HOME'] + '/models'));"
        "print(os.path.exists('/usr/local/share/ca-certificates/segmaker-extra'))"
    )
    probe_command = ["docker", "run", "--rm", "--entrypoint", "python", cpu_image, "-c", probe]
    lines = run(probe_command).stdout.split("\n")
    assert lines[0] == "1.9.1 1.23.5 0.10.5.post0"
    assert lines[1] == "False True"  # nothing under /opt/ml (SageMaker mounts it); the weights folder exists
    assert lines[2] == "False"  # extra CA certificates stay in the deps stage


@pytest.mark.docker
@pytest.mark.slow
def test_the_image_venv_holds_exactly_the_locked_packages(cpu_image):
    """Every distribution Python sees in the image, at the version of the CPU or build lock; nothing else but
    segmaker itself (so nothing resolved at build time slipped past the locks)."""
    probe = (
        "import importlib.metadata as meta, sys;"
        "print('%d.%d' % sys.version_info[:2]);"
        "[print(d.metadata['Name'], d.version) for d in meta.distributions()]"
    )
    probe_command = ["docker", "run", "--rm", "--entrypoint", "python", cpu_image, "-c", probe]
    lines = run(probe_command).stdout.split("\n")
    assert lines[0] == target_python(LOCKS["cpu"])
    installed = sorted(
        (canonicalize_name(name), version) for name, version in (line.split() for line in lines[1:] if line)
    )
    locked = {**read_lock(LOCKS["cpu"]), **read_lock(LOCKS["build"])}
    expected = sorted([(name, pin.version) for name, pin in locked.items()] + [("segmaker", "0.1.0")])
    assert installed == expected


@pytest.mark.docker
@pytest.mark.slow
def test_a_lock_for_another_python_is_refused_by_name(cpu_image):
    """The GPU lock (Python 3.8) on the CPU base (3.11): the build stops in the deps stage, naming both
    versions. The stages before it come from the cache of the CPU image's build."""
    build = [str(REPO_ROOT / "docker" / "build_image.sh"), "--gpu", "--base", "segmaker-base:bookworm",
             "--weights", "skip", "--tag", "segmaker:lock-refusal-test", "--", "--force-rm"]
    result = run(build, check=False, timeout=900)  # --force-rm: the failed step leaves no stopped container
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    wanted = "container/requirements-gpu.lock is for Python {}; the base {} has {}".format(
        target_python(LOCKS["gpu"]), "segmaker-base:bookworm", target_python(LOCKS["cpu"])
    )
    assert wanted in output, output[-3000:]


class Background:
    """A command running in the background, its output in files (nobody reads a pipe meanwhile)."""

    def __init__(self, command: List[str], folder: Path, **kwargs):
        folder.mkdir(parents=True, exist_ok=True)
        self.output, self.errors = folder / "stdout", folder / "stderr"
        with self.output.open("w") as output, self.errors.open("w") as errors:
            self.process = subprocess.Popen(command, stdout=output, stderr=errors, text=True, **kwargs)

    def finish(self, timeout: float) -> Tuple[int, str, str]:
        """(exit code, stdout, stderr) once it has ended."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        return code, self.output.read_text(), self.errors.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def container_trainings(cpu_image, tmp_path_factory) -> Iterator[dict]:
    """The module's two trainings in the container, started at once (each keeps about one CPU core busy, so
    on two cores they overlap): "file", `docker run -v TREE:/opt/ml IMAGE train` (one tiny epoch), and
    "pipe", local_test/pipe_local.sh (FIFOs fed by `segmaker pipe-feed` on the host, read by `train` inside).
    Each: (the job, its folder)."""
    root = tmp_path_factory.mktemp("docker_train")
    paths = write_opt_ml(root / "opt_ml", hyperparameters=TINY_TRAINING)
    pipe = root / "pipe"
    source = write_opt_ml(pipe / "source", train=4, validation=2, hyperparameters=TINY_TRAINING)
    env = dict(os.environ, IMAGE=cpu_image, WORK_DIR=str(pipe / "work"), PYTHON=sys.executable,
               SPLIT_RECORDS_OVER="1000")
    jobs = {}
    try:
        jobs["file"] = (Background(docker_run_args(cpu_image, "train", volumes=[f"{paths.base}:/opt/ml"]),
                                   root / "file-log"), paths.base)
        jobs["pipe"] = (Background([str(REPO_ROOT / "local_test" / "pipe_local.sh"), str(source.base)],
                                   pipe / "log", env=env), pipe)
        yield jobs
    finally:
        for job, _ in jobs.values():
            job.stop()


@pytest.fixture(scope="module")
def trained_tree(container_trainings) -> Path:
    """An /opt/ml tree after `docker run -v TREE:/opt/ml IMAGE train` (one tiny epoch)."""
    job, base = container_trainings["file"]
    code, _, errors = job.finish(timeout=1800)
    failure_file = base / "output" / "failure"
    failure = failure_file.read_text() if failure_file.exists() else ""
    assert code == 0, f"train exited {code}: {failure}\n{errors[-4000:]}"
    return base


@pytest.mark.docker
@pytest.mark.slow
def test_train_leaves_the_model_and_outputs(trained_tree):
    model = trained_tree / "model"
    for name in ("model_best.params", "model_algo-1", "hyperparams.json", "segmaker.json"):
        assert (model / name).is_file(), f"{name} missing from {sorted(p.name for p in model.iterdir())}"
    assert json.loads((model / "segmaker.json").read_text())["num_classes"] == 3
    assert any((trained_tree / "output" / "data").iterdir())
    assert not (trained_tree / "output" / "failure").exists()


@pytest.mark.docker
@pytest.mark.slow
def test_train_user_error_is_a_failure_reason(cpu_image, tmp_path):
    paths = write_opt_ml(tmp_path / "opt_ml", train=2, validation=1, hyperparameters={"num_clases": "3"})
    result = run(docker_run_args(cpu_image, "train", volumes=[f"{paths.base}:/opt/ml"]), check=False)
    assert result.returncode != 0
    reason = paths.failure_file.read_text()
    assert "num_clases" in reason and "num_classes" in reason
    assert "Traceback" not in reason


@pytest.mark.docker
@pytest.mark.slow
def test_pipe_mode_training_in_the_container(container_trainings):
    """local_test/pipe_local.sh: FIFOs fed by `segmaker pipe-feed` on the host, read by `train` inside."""
    job, folder = container_trainings["pipe"]
    code, output, errors = job.finish(timeout=600)
    assert code == 0, output[-3000:] + errors[-3000:]
    opt_ml = folder / "work" / "opt_ml"
    channels = json.loads((opt_ml / "input/config/inputdataconfig.json").read_text())
    assert channels["train"]["TrainingInputMode"] == "Pipe"
    assert (opt_ml / "model" / "model_best.params").is_file()
    assert "validation mIOU" in output + errors


@pytest.fixture
def server(cpu_image, trained_tree, tmp_path) -> Iterator[dict]:
    """`docker run -p PORT:8080 IMAGE serve` on the trained model, mounted read-only as SageMaker does.

    With a fake /dev/nvidia0 (an empty file), as the CPU image sees a GPU host: the server must count GPUs
    as its MXNet does (none) and serve on the CPU, not fail on mx.gpu(0)."""
    name = f"segmaker-test-serve-{free_port()}"
    port = free_port()
    fake_gpu = tmp_path / "nvidia0"
    fake_gpu.write_bytes(b"")
    run(["docker", "run", "-d", "--rm", "--name", name, "-p", f"127.0.0.1:{port}:8080",
         "-v", f"{trained_tree / 'model'}:/opt/ml/model:ro", "-v", f"{fake_gpu}:/dev/nvidia0:ro",
         cpu_image, "serve"])
    try:
        wait_until_pinged(port, timeout=180, container=name)
        yield {"name": name, "port": port}
    finally:
        remove_container(name)


@pytest.mark.docker
@pytest.mark.slow
def test_serve_answers_ping_and_returns_a_same_size_png(server):
    image, _ = make_sample(np.random.default_rng(5), 45, 70, 3)
    status, headers, body = http_request(
        server["port"], "POST", "/invocations", encode_image(image),
        {"Content-Type": "image/jpeg", "Accept": "image/png"},
    )
    assert status == 200, (body[:500], container_logs(server["name"]))
    assert headers["Content-Type"].startswith("image/png")
    mask = Image.open(io.BytesIO(body))
    assert mask.size == (70, 45) and mask.mode in ("L", "P")
    assert int(np.asarray(mask).max()) < 3


@pytest.mark.docker
@pytest.mark.slow
def test_docker_stop_ends_the_server_promptly(server):
    started = time.monotonic()
    run(["docker", "stop", "--time", "30", server["name"]], timeout=60)
    elapsed = time.monotonic() - started
    # A shell entrypoint or a server ignoring SIGTERM would take the full 30 s grace period.
    assert elapsed < 10, f"docker stop took {elapsed:.1f} s"


# ---- lint of the image's files (hadolint and shellcheck come with the dev extras) ----

SHELL_SCRIPTS = (
    "build_and_push.sh",
    "docker/make_base_image.sh",
    "docker/build_image.sh",
    "container/install_system_packages.sh",
    "scripts/demo.sh",
    "local_test/common.sh",
    "local_test/train_local.sh",
    "local_test/serve_local.sh",
    "local_test/predict.sh",
    "local_test/gpu_smoke.sh",
    "local_test/pipe_local.sh",
)


def _tool(name: str) -> str:
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]')")
    return str(path)


def test_dockerfile_passes_hadolint():
    result = run([_tool("hadolint"), str(REPO_ROOT / "Dockerfile")], check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_shell_scripts_pass_shellcheck():
    scripts = [str(REPO_ROOT / script) for script in SHELL_SCRIPTS]
    result = run([_tool("shellcheck"), "-x", *scripts], check=False, cwd=str(REPO_ROOT))
    assert result.returncode == 0, result.stdout + result.stderr
