"""The Gluon trainer: optimizer choice and its hyperparameters, no weight decay on BatchNorm and biases."""

from typing import Dict

from mxnet import gluon

from segmaker.config import TrainingConfig
from segmaker.training.precision import FLOAT16, attach_loss_scaler

# Parameter names whose weight decay is switched off: BatchNorm's scale/shift and every bias.
NO_WEIGHT_DECAY_PATTERN = ".*gamma|.*beta|.*bias"


def optimizer_params(config: TrainingConfig, multi_precision: bool) -> Dict[str, object]:
    """MXNet optimizer arguments for `config.optimizer`, mapped as the built-in algorithm maps them."""
    params: Dict[str, object] = {
        "learning_rate": config.learning_rate,
        "wd": config.weight_decay,
        "multi_precision": multi_precision,
    }
    if config.optimizer in ("sgd", "nag"):
        params["momentum"] = config.momentum
    elif config.optimizer == "rmsprop":
        # gamma2 is RMSProp's momentum, which MXNet only applies in the centered (Graves) variant.
        params.update(gamma1=config.gamma1, gamma2=config.gamma2, centered=True)
    return params


def exclude_norm_and_bias_from_weight_decay(net: gluon.Block) -> None:
    for param in net.collect_params(NO_WEIGHT_DECAY_PATTERN).values():
        param.wd_mult = 0.0


def make_trainer(net: gluon.Block, config: TrainingConfig, kvstore: str) -> gluon.Trainer:
    """The trainer; under float16 AMP with its dynamic loss scaler and the update off the kvstore (the
    overflow check must see the reduced gradients before anything is updated: precision.py)."""
    exclude_norm_and_bias_from_weight_decay(net)
    mixed = config.precision_dtype == FLOAT16
    trainer = gluon.Trainer(
        net.collect_params(),
        config.optimizer,
        # AMP keeps the parameters in float32: no float32 master copy needed.
        optimizer_params(config, multi_precision=False),
        kvstore=kvstore,
        update_on_kvstore=False if mixed else None,
    )
    if mixed:
        attach_loss_scaler(trainer)
    return trainer
