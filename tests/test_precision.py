"""float16 mixed precision: what can be checked without a GPU (see README, "Mixed precision")."""

import subprocess
import sys

import mxnet as mx
import pytest

from segmaker.errors import UserError
from segmaker.training.devices import check_precision
from tests.fresh_process import run_check_script


def test_amp_dynamic_loss_scaling_through_our_step():
    """In a fresh process (amp.init patches MXNet process-wide): our step under AMP scales the loss and
    divides it out exactly (same weights as float32 after one step: the scale is a power of 2), skips the
    update on an overflow and halves the scale, and doubles it after the window of clean steps."""
    report = run_check_script("amp_scaling_check.py")
    assert report["initial_scale"] == 2.0**16
    assert report["update_on_kvstore_requested"]["update_on_kvstore"] is False
    assert report["first_step_max_difference_to_float32"] == 0.0
    assert report["overflow_step_changed_weights"] is False
    assert report["scale_after_overflow"] == 2.0**15
    assert report["scale_used_after_overflow"] == 2.0**15
    assert report["scale_after_two_clean_steps"] == 2.0**16


def scaler(loss_scale, next_loss_scale, unskipped):
    return {"loss_scale": loss_scale, "next_loss_scale": next_loss_scale, "unskipped": unskipped}


def test_the_dynamic_loss_scale_is_checkpointed_and_restored(tmp_path):
    """In a fresh process, with MXNet's growth window set to 3 clean steps: a run takes a clean step, an
    overflow (the scale halves to 2^15, MXNet applying it one step late) and a clean step, is checkpointed,
    then takes 3 more clean steps (the third window step doubles the scale back to 2^16). A new trainer
    (its scaler at 2^16) restored from the checkpoint has the checkpointed scale and clean-step count and
    goes through the same scales and ends with the same weights; without the restore it would double to
    2^17. A checkpoint written before the scaler was kept (no "loss_scaler" in state.json) still resumes, at
    2^16."""
    report = run_check_script("amp_checkpoint_check.py", [str(tmp_path)])
    checkpointed = scaler(2.0**15, 2.0**15, 1)
    assert report["before_checkpoint"] == [scaler(2.0**16, 2.0**16, 1), scaler(2.0**16, 2.0**15, 0),
                                           checkpointed]
    assert report["uninterrupted"] == [scaler(2.0**15, 2.0**15, 2), scaler(2.0**15, 2.0**16, 0),
                                       scaler(2.0**16, 2.0**16, 1)]
    assert report["in_state_json"] == checkpointed
    assert report["new_trainer"] == scaler(2.0**16, 2.0**16, 0)
    assert report["restored"] == checkpointed
    assert report["resumed"] == report["uninterrupted"]
    assert report["resumed_weights_max_difference"] == 0.0
    assert report["old_checkpoint_iterations"] == 3
    assert report["restored_from_old_checkpoint"] == scaler(2.0**16, 2.0**16, 0)


def test_float16_is_refused_on_cpu_contexts_with_the_reason():
    with pytest.raises(UserError, match="no float16 matrix product on the CPU"):
        check_precision("float16", [mx.cpu()])
    check_precision("float32", [mx.cpu()])


def test_mxnet_cannot_run_a_float16_convolution_on_the_cpu():
    """Why check_precision refuses float16 on the CPU; the day this passes there, revisit the refusal."""
    code = (
        "import mxnet as mx\n"
        "from mxnet.contrib import amp\n"
        "amp.init()\n"
        "net = mx.gluon.nn.Conv2D(4, 3, in_channels=3)\n"
        "net.initialize()\n"
        "net(mx.nd.ones((1, 3, 8, 8))).wait_to_read()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "FP16 gemm on cpu not implemented" in result.stderr
