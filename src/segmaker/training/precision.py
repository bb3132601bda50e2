"""precision_dtype=float16: mixed precision through MXNet's AMP with dynamic loss scaling.

MXNet's AMP (mxnet/contrib/amp) patches the operator namespaces process-wide (`amp.init()`, before the
network is built): convolutions and matrix products run in float16, numerically sensitive operators
(softmax, norms, sums) in float32, and the parameters stay float32. `amp.init_trainer(trainer)` attaches
a dynamic LossScaler (start 2^16): `amp.scale_loss` multiplies the objectives by the scale before the
backward and sets trainer._scale so the step divides it out again; before each update the trainer checks the
gradients for inf/NaN; on overflow it skips the update and halves the scale; after 2000 steps without
overflow it doubles it (at most 2^24).

The trainer must not update on the kvstore: Trainer._update checks for overflow only after the reduction and
only in device 0's gradients, and an update on the kvstore has already happened by then (see optimizer.py).

float16 cannot run on CPU contexts: MXNet 1.9.1 has no float16 GEMM on the CPU ("FP16 gemm on cpu not
implemented!"), so devices.check_precision refuses it there.
"""

from typing import List

import mxnet as mx
from mxnet import gluon

FLOAT16 = "float16"


def init_mixed_precision() -> None:
    """Patch MXNet's operators for float16 AMP; call once, before building any network (idempotent)."""
    from mxnet.contrib import amp

    amp.init(target_dtype=FLOAT16)


def attach_loss_scaler(trainer: gluon.Trainer) -> None:
    from mxnet.contrib import amp

    amp.init_trainer(trainer)


def uses_loss_scaling(trainer: gluon.Trainer) -> bool:
    return getattr(trainer, "_amp_loss_scaler", None) is not None


def scaled(objectives: List[mx.nd.NDArray], trainer: gluon.Trainer) -> List[mx.nd.NDArray]:
    """The objectives to backpropagate: multiplied by the current loss scale under AMP (and the trainer told
    to divide it out), else as they are. Call inside autograd.record(): the product must be recorded."""
    if not uses_loss_scaling(trainer):
        return objectives
    from mxnet.contrib import amp

    with amp.scale_loss(objectives, trainer) as scaled_objectives:
        return list(scaled_objectives)
