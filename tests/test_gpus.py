"""One GPU count, MXNet's: the CPU image on a GPU host (device files present) serves on the CPU."""

import subprocess

import mxnet as mx
import pytest

from segmaker import gpus
from segmaker.environment import ServingSettings, visible_gpu_devices
from segmaker.serving.server import plan_server
from segmaker.training import loop


@pytest.fixture
def fake_gpu_host(tmp_path):
    """A /dev with the device files a GPU host exposes (`docker run --gpus` adds these)."""
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in ("nvidia0", "nvidiactl", "nvidia-uvm"):
        (dev / name).write_text("")
    return dev


def test_device_files_are_only_a_hint(fake_gpu_host):
    assert visible_gpu_devices({}, dev_dir=fake_gpu_host) == 1
    assert visible_gpu_devices({"CUDA_VISIBLE_DEVICES": "0,1"}, dev_dir=fake_gpu_host) == 2


@pytest.mark.skipif(mx.context.num_gpus() > 0, reason="proves the CPU build's answer")
def test_cpu_mxnet_on_a_gpu_host_serves_on_the_cpu(fake_gpu_host):
    count = gpus.gpu_count_before_fork(visible_gpu_devices({}, dev_dir=fake_gpu_host))
    assert count == 0  # MXNet's answer, asked in a child process, not the one device file
    plan = plan_server(ServingSettings(), cpu_count=8, gpus=count)
    assert plan.gpus == 0 and plan.gpu_of(0) is None and plan.workers == 2


def test_no_device_no_child_process(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("MXNet was asked although no GPU device is visible")

    monkeypatch.setattr(subprocess, "run", refuse)
    assert gpus.gpu_count_before_fork(0) == 0


def test_a_child_that_cannot_answer_means_cpu(monkeypatch):
    def broken(*args, **kwargs):
        raise subprocess.CalledProcessError(1, "python")

    monkeypatch.setattr(subprocess, "run", broken)
    assert gpus.gpu_count_before_fork(1) == 0


def test_training_and_serving_share_the_count():
    assert loop.mxnet_gpu_count is gpus.mxnet_gpu_count
    assert gpus.mxnet_gpu_count() == gpus.mxnet_gpu_count_in_child()
