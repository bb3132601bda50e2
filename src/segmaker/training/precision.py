"""precision_dtype=float16: mixed precision through MXNet's AMP with dynamic loss scaling.

MXNet's AMP (mxnet/contrib/amp) patches the operator namespaces process-wide (`amp.init()`, before the
network is built): convolutions and matrix products run in float16, numerically sensitive operators
(softmax, norms, sums) in float32, and the parameters stay float32. `amp.init_trainer(trainer)` attaches
a dynamic LossScaler (start 2^16): `amp.scale_loss` multiplies the objectives by the scale before the
backward and sets trainer._scale so the step divides it out again; before each update the trainer checks the
gradients for inf/NaN; on overflow it skips the update and halves the scale; after 2000 steps without
overflow it doubles it (at most 2^24). That state lives in the scaler only; checkpoints keep it
(`loss_scaler_state` / `restore_loss_scaler`) so a resumed job goes on with the scale it had reached instead
of starting again at 2^16 and skipping steps until it has halved its way back down.

The trainer must not update on the kvstore: Trainer._update checks for overflow only after the reduction and
only in device 0's gradients, and an update on the kvstore has already happened by then (see optimizer.py).

float16 cannot run on CPU contexts: MXNet 1.9.1 has no float16 GEMM on the CPU ("FP16 gemm on cpu not
implemented!"), so devices.check_precision refuses it there.
"""

import logging
from dataclasses import asdict, dataclass
from typing import List, Optional

import mxnet as mx
from mxnet import gluon

log = logging.getLogger(__name__)

FLOAT16 = "float16"


@dataclass(frozen=True)
class LossScalerState:
    """What MXNet's dynamic LossScaler (mxnet/contrib/amp/loss_scaler.py) carries from one step to the next.

    `loss_scale` multiplies the next backward's objectives. `next_loss_scale` is what the next overflow check
    moves `loss_scale` to before it decides (MXNet's scaler applies a halving or doubling one step late), and
    `unskipped` counts the clean steps since the scale last changed. The growth window (2000) and the
    maximum (2^24) are MXNet's constants, not state.
    """

    loss_scale: float
    next_loss_scale: float
    unskipped: int

    def to_json_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json_dict(cls, raw: dict) -> "LossScalerState":
        return cls(float(raw["loss_scale"]), float(raw["next_loss_scale"]), int(raw["unskipped"]))


def init_mixed_precision() -> None:
    """Patch MXNet's operators for float16 AMP; call once, before building any network (idempotent)."""
    from mxnet.contrib import amp

    amp.init(target_dtype=FLOAT16)


def attach_loss_scaler(trainer: gluon.Trainer) -> None:
    from mxnet.contrib import amp

    amp.init_trainer(trainer)


def uses_loss_scaling(trainer: gluon.Trainer) -> bool:
    return getattr(trainer, "_amp_loss_scaler", None) is not None


def loss_scaler_state(trainer: gluon.Trainer) -> Optional[LossScalerState]:
    """The dynamic loss scaler's state, or None when the trainer scales nothing (float32)."""
    if not uses_loss_scaling(trainer):
        return None
    scaler = trainer._amp_loss_scaler
    return LossScalerState(scaler._loss_scale, scaler._next_loss_scale, scaler._unskipped)


def restore_loss_scaler(trainer: gluon.Trainer, state: Optional[LossScalerState]) -> None:
    """Put a checkpoint's loss scaler state back into the trainer's scaler.

    A checkpoint written before the scaler state was kept has none: the scale then starts again at 2^16."""
    if not uses_loss_scaling(trainer):
        return
    if state is None:
        log.info("The checkpoint holds no loss scale: dynamic loss scaling starts again at 2^16")
        return
    scaler = trainer._amp_loss_scaler
    scaler._loss_scale, scaler._next_loss_scale = state.loss_scale, state.next_loss_scale
    scaler._unskipped = state.unskipped
    log.info("Loss scale restored: %g after %d clean steps", state.loss_scale, state.unskipped)


def scaled(objectives: List[mx.nd.NDArray], trainer: gluon.Trainer) -> List[mx.nd.NDArray]:
    """The objectives to backpropagate: multiplied by the current loss scale under AMP (and the trainer told
    to divide it out), else as they are. Call inside autograd.record(): the product must be recorded."""
    if not uses_loss_scaling(trainer):
        return objectives
    from mxnet.contrib import amp

    with amp.scale_loss(objectives, trainer) as scaled_objectives:
        return list(scaled_objectives)
