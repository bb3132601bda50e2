"""The training network and the validation network, and where their starting weights come from.

Starting weights, in order of precedence: the `model` channel (incremental training: a previous job's
model, whose algorithm, backbone and class count must match), else ImageNet backbone weights when
use_pretrained_model (the `pretrained` channel, else $MXNET_HOME/models), else random initialisation.
"""

import logging
from pathlib import Path
from typing import List, Optional

import mxnet as mx

from segmaker import artifacts, environment, models
from segmaker.config import TrainingConfig
from segmaker.environment import Paths
from segmaker.errors import UserError
from segmaker.training.job import TrainingJob
from segmaker.training.precision import FLOAT16, init_mixed_precision

log = logging.getLogger(__name__)

MODEL_CHANNEL = "model"
PRETRAINED_CHANNEL = "pretrained"


def build_training_network(job: TrainingJob, contexts: List[mx.Context]) -> mx.gluon.HybridBlock:
    """The network at crop size (with the auxiliary head when aux_loss), weights loaded, on `contexts`."""
    config = job.config
    if config.precision_dtype == FLOAT16:
        init_mixed_precision()  # before the network is built: AMP patches the operators it is made of
    syncbn_devices = len(contexts) if config.syncbn and len(contexts) > 1 else 0
    if syncbn_devices:
        _check_syncbn(job, contexts)
    net = models.build_network(
        config.algorithm,
        config.backbone,
        config.num_classes,
        size=config.crop_size,
        aux=config.aux_loss,
        syncbn_devices=syncbn_devices,
    )
    _load_starting_weights(net, job)
    if config.aux_loss and config.aux_weight == 0:
        freeze_auxiliary_head(net)
    net.collect_params().reset_ctx(contexts)
    net.hybridize(static_alloc=True, static_shape=True)
    return net


def _check_syncbn(job: TrainingJob, contexts: List[mx.Context]) -> None:
    """SyncBatchNorm's preconditions, GPUs and CPU contexts alike.

    MXNet's SyncBatchNorm averages the devices' means and mean squares with equal weights
    (sync_batch_norm-inl.h, SharedND::MeanReady), which is the statistic of the whole batch only when every
    device holds as many images. On CPU contexts it also needs the engine settings of
    environment.mxnet_cpu_syncbn_environment, or it can deadlock."""
    devices = len(contexts)
    per_host = job.config.mini_batch_size // job.resources.world_size
    if per_host % devices:
        raise UserError(
            f"syncbn needs every device to hold as many images: mini_batch_size {job.config.mini_batch_size}"
            f" gives {per_host} images per host, not a multiple of its {devices} devices; use a multiple of"
            f" {devices * job.resources.world_size} or syncbn=False"
        )
    if contexts[0].device_type == "cpu" and not environment.mxnet_cpu_syncbn_ready(devices):
        raise RuntimeError(
            f"syncbn over {devices} CPU contexts needs MXNet's engine settings"
            f" {environment.mxnet_cpu_syncbn_environment(devices, {})} in the environment before MXNet loads"
            " (`segmaker train` sets them); without them SyncBatchNorm can deadlock"
        )
    log.info("syncbn: BatchNorm statistics over the %d devices' images (SyncBatchNorm)", devices)


def freeze_auxiliary_head(net: mx.gluon.HybridBlock) -> None:
    """aux_weight=0: the auxiliary head takes no part in the loss, so its weights get no gradient and no
    update at all (grad_req 'null' also spares them weight decay, which a zero gradient would not)."""
    for param in net.auxlayer.collect_params().values():
        param.grad_req = "null"


def _load_starting_weights(net: mx.gluon.HybridBlock, job: TrainingJob) -> None:
    model_dir = _channel(job.paths, MODEL_CHANNEL)
    if model_dir is not None:
        _load_previous_model(net, model_dir, job.config)
    elif job.config.use_pretrained_model:
        weights = models.find_pretrained_weights(
            job.config.backbone,
            pretrained_dir=_channel(job.paths, PRETRAINED_CHANNEL),
            mxnet_home=job.mxnet_home,
        )
        log.info("Starting the backbone from ImageNet weights %s", weights)
        models.load_backbone_weights(net, weights)
    else:
        log.info("use_pretrained_model=False: the backbone starts from random weights")


def _load_previous_model(net: mx.gluon.HybridBlock, model_dir: Path, config: TrainingConfig) -> None:
    previous = artifacts.read_model_dir(model_dir)
    artifacts.check_compatible(previous, config.algorithm, config.backbone, config.num_classes)
    params_file = previous.params_file("best")
    log.info("Incremental training: starting from %s", params_file)
    # A model trained without the auxiliary head cannot start a job with aux_loss=True: the error names
    # the file and the first missing parameter (auxlayer...).
    models.load_parameters(net, params_file)


def build_validation_network(config: TrainingConfig) -> mx.gluon.HybridBlock:
    """The network at the inference working size, without the auxiliary head (weights copied in later)."""
    return models.build_network(
        config.algorithm,
        config.backbone,
        config.num_classes,
        size=working_size(config),
        aux=False,
    )


def working_size(config: TrainingConfig) -> int:
    """Validation and serving run at the scale training saw on average (base_size), at least the crop."""
    return models.working_size_for(max(config.base_size, config.crop_size))


def _channel(paths: Paths, name: str) -> Optional[Path]:
    folder = paths.channel_dir(name)
    return folder if folder.is_dir() else None
