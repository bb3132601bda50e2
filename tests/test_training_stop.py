"""A stop request (SIGTERM) ends the job within SageMaker's budget, and what it leaves is usable."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

from segmaker import artifacts, cli, environment, outputs
from segmaker.config import parse_hyperparameters
from segmaker.training.checkpoints import CheckpointStore
from tests.serving_model import write_tiny_model_dir
from tests.synthetic import write_opt_ml

REPO = Path(__file__).resolve().parents[1]
STOP_BUDGET_SECONDS = 60  # SageMaker SIGKILLs 120 s after SIGTERM; keep half of it spare
# The harness hands out each validation batch (one image) SECONDS_PER_VALIDATION_BATCH late, so the whole
# validation takes longer than twice the budget by construction, whatever the machine's speed; the images
# themselves are small, so one batch's forward stays short.
VALIDATION_IMAGES = 50
SECONDS_PER_VALIDATION_BATCH = 3.0
# `segmaker train` with the data feed's validation batches delayed; prints when each one is handed out.
SLOW_VALIDATION_HARNESS = """
import sys, time
from segmaker import cli
from segmaker.training import feed
original = feed.DataFeed.validation_batches
def validation_batches(self):
    for number, batch in enumerate(original(self), 1):
        time.sleep({seconds})
        print("harness: validation batch", number, "handed out at", time.monotonic(), flush=True)
        yield batch
feed.DataFeed.validation_batches = validation_batches
sys.exit(cli.main(["train"]))
"""
HANDED_OUT = re.compile(r"harness: validation batch (\d+) handed out at ([\d.]+)")


class Output:
    """The lines a process prints, collected by a thread while it runs."""

    def __init__(self, process: subprocess.Popen):
        self.lines = []
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, fragment: str, process: subprocess.Popen, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while fragment not in self.text():
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError(f"no {fragment!r} in the output:\n{self.text()}")
            time.sleep(0.2)


@pytest.mark.slow
def test_a_stop_during_a_long_validation_ends_the_job_within_the_budget(tmp_path):
    """SIGTERM during a validation that would take more than twice the 60 s budget (50 images, each handed
    out 3 s late by a harness around the data feed: 150 s at least, on any machine; the test also checks the
    delay from the hand-out times it logs) must end the job within 60 s: validation looks at the stop flag
    between batches, one checkpoint is written, and the model directory without building a network
    (before, a stop waited for the whole validation, then built and exported the network)."""
    assert VALIDATION_IMAGES * SECONDS_PER_VALIDATION_BATCH > 2 * STOP_BUDGET_SECONDS
    hyperparameters = {
        "use_pretrained_model": "False", "crop_size": 32, "base_size": 64, "epochs": 1,
        "mini_batch_size": 2, "validation_mini_batch_size": 1, "data_workers": 1, "seed": 3,
    }
    paths = write_opt_ml(tmp_path, train=4, validation=VALIDATION_IMAGES, hyperparameters=hyperparameters)
    paths.checkpoints_dir.mkdir()
    env = dict(os.environ, SAGEMAKER_BASE_DIR=str(paths.base), PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]))
    harness = SLOW_VALIDATION_HARNESS.format(seconds=SECONDS_PER_VALIDATION_BATCH)
    process = subprocess.Popen([sys.executable, "-c", harness], cwd=str(REPO), env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = Output(process)
    output.wait_for("harness: validation batch 3 handed out", process, timeout=300)  # well into validation
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_BUDGET_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"running {STOP_BUDGET_SECONDS} s after SIGTERM:\n{output.text()}") from None
    seconds = time.monotonic() - signalled
    log = output.text()
    print(f"stopped {seconds:.1f} s after SIGTERM; the log from the signal on:")
    print(log[log.index("Received signal"):])
    assert process.returncode == cli.EXIT_STOPPED, log
    assert not paths.failure_file.exists()
    assert "validation mIOU" not in log  # the stop came during validation, which never finished
    validated = int(re.search(r"Validation interrupted by the stop request after (\d+) images", log).group(1))
    handed_out = [float(at) for _, at in HANDED_OUT.findall(log)]
    # Stopped at the first look at the flag after the signal: the batch then handed out is not validated.
    assert validated >= 2 and len(handed_out) == validated + 1, log
    seconds_per_batch = (handed_out[-1] - handed_out[0]) / (len(handed_out) - 1)
    whole_validation = VALIDATION_IMAGES * seconds_per_batch
    print(f"{len(handed_out)} validation batches handed out, {seconds_per_batch:.1f} s apart: the whole"
          f" validation would have taken about {whole_validation:.0f} s")
    assert whole_validation > 2 * STOP_BUDGET_SECONDS
    assert log.count("Checkpoint written") == 1, log
    assert (paths.output_data_dir / outputs.METRICS_JSON).is_file()
    assert not (paths.output_data_dir / outputs.PREDICTIONS_PNG).exists()  # no time spent on the plot

    config = parse_hyperparameters(environment.read_hyperparameters(paths))
    checkpoint = CheckpointStore(paths.checkpoints_dir, config.to_json_dict()).latest()
    assert checkpoint.state.completed_iterations == 2 and len(checkpoint.state.history) == 0

    model = artifacts.read_model_dir(paths.model_dir)
    assert model.onnx_file is None and model.symbol_file is None  # no network was built to export
    inference = artifacts.load_inference(model, [mx.cpu()], working_size=64)
    (mask,) = inference.predict_masks([np.zeros((40, 56, 3), dtype=np.uint8)])
    assert mask.shape == (40, 56)


def test_export_adds_the_symbol_and_onnx_files_to_a_stopped_job_s_model(tmp_path, caplog):
    """What the README tells users to run on a stopped job's model directory."""
    model_dir = write_tiny_model_dir(tmp_path / "model", "fcn", size=32)
    stopped = artifacts.read_model_dir(model_dir)
    manifest_before = (model_dir / artifacts.MANIFEST).read_bytes()
    # A stopped job's write: parameters and manifest only.
    final_net = artifacts.load_network(stopped.manifest, stopped.final_params, aux=True)
    artifacts.write_model_dir(model_dir, stopped.manifest, final_net=final_net, exports=False,
                              best=stopped.best_params, hyperparameters={})
    assert artifacts.read_model_dir(model_dir).onnx_file is None

    assert cli.main(["export", str(model_dir)]) == cli.EXIT_OK
    exported = artifacts.read_model_dir(model_dir)
    assert exported.symbol_file and exported.export_params and exported.onnx_file
    assert (model_dir / artifacts.MANIFEST).read_bytes() == manifest_before
    assert oct(exported.onnx_file.stat().st_mode & 0o777) == "0o644"
    served = mx.gluon.SymbolBlock.imports(str(exported.symbol_file), ["data"], str(exported.export_params))
    reference = artifacts.load_inference(exported, [mx.cpu()])
    image = mx.nd.random.uniform(shape=(1, 3, 32, 32))
    expected = reference.forward([image[0].asnumpy()])[0].asnumpy()
    np.testing.assert_allclose(served(image)[0].asnumpy(), expected, rtol=1e-4, atol=1e-4)


def test_export_of_something_else_is_a_user_error(tmp_path):
    assert cli.main(["export", str(tmp_path / "absent")]) == cli.EXIT_USER_ERROR
