"""The Gluon trainer: optimizer choice and its hyperparameters, no weight decay on BatchNorm and biases."""

from typing import Dict

import mxnet as mx
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


class GlobalBatchTrainer(gluon.Trainer):
    """On several hosts, `step(batch_size)` is given this host's share of the global batch while the
    kvstore hands back the gradient summed over every host: divide by the global batch (the order gives
    every host an equal share: mini_batch_size is a multiple of the host count)."""

    def __init__(self, *args, hosts: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.hosts = hosts

    def step(self, batch_size, ignore_stale_grad=False):
        super().step(batch_size * self.hosts, ignore_stale_grad)

    def _init_params(self):
        """Gluon's hook that puts the parameters on the kvstore (inside the first `step`): `broadcast`, i.e.
        rank 0 pushes its weights, then every worker PULLS them. Wait for those pulls before the step's
        gradient push-pull is issued. On CPU, MXNet's KVStoreDist (src/kvstore/kvstore_dist.h, PushPullImpl:
        `comm_buf = merged;  // avoid memory copy`) rebinds the key's buffer to the gradient array, so the
        pull (writing the old buffer) and the push (reading the gradient) share no engine variable and may
        leave in either order. A pull that reaches the server after every host's push of the round is
        answered with the summed GRADIENT: that host silently trains from the wrong weights (seen: two hosts'
        Dense weights 1.04 apart after 3 steps, in one run of four under load). GPUs copy through one pinned
        buffer, which orders them; waiting costs one round trip, once."""
        super()._init_params()
        mx.nd.waitall()


def make_trainer(net: gluon.Block, config: TrainingConfig, kvstore, hosts: int = 1) -> gluon.Trainer:
    """The trainer; under float16 AMP with its dynamic loss scaler and the update off the kvstore (the
    overflow check must see the reduced gradients before anything is updated: precision.py).

    `kvstore`: a type name, or on several hosts the dist kvstore object, which then only sums gradients
    (update_on_kvstore=False): every worker runs the optimizer itself, so the learning rate it sets each
    iteration is the one applied (servers given the optimizer would keep the one pickled to them first)."""
    exclude_norm_and_bias_from_weight_decay(net)
    mixed = config.precision_dtype == FLOAT16
    arguments = dict(
        # AMP keeps the parameters in float32: no float32 master copy needed.
        optimizer_params=optimizer_params(config, multi_precision=False),
        kvstore=kvstore,
        update_on_kvstore=False if mixed or hosts > 1 else None,
    )
    if hosts > 1:
        trainer = GlobalBatchTrainer(net.collect_params(), config.optimizer, hosts=hosts, **arguments)
    else:
        trainer = gluon.Trainer(net.collect_params(), config.optimizer, **arguments)
    if mixed:
        attach_loss_scaler(trainer)
    return trainer
