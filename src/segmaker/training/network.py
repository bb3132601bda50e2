"""The training network and the validation network, and where their starting weights come from.

Starting weights, in order of precedence: the `model` channel (incremental training: a previous job's
model, whose algorithm, backbone and class count must match), else ImageNet backbone weights when
use_pretrained_model (the `pretrained` channel, else $MXNET_HOME/models), else random initialisation.
"""

import logging
from pathlib import Path
from typing import List, Optional

import mxnet as mx

from segmaker import artifacts, models
from segmaker.config import TrainingConfig
from segmaker.environment import Paths
from segmaker.training.job import TrainingJob
from segmaker.training.precision import FLOAT16, init_mixed_precision

log = logging.getLogger(__name__)

# Why syncbn stays off on CPU contexts (measured with MXNet 1.9.1; see the README's "training step"):
# SyncBatchNorm (src/operator/contrib/sync_batch_norm-inl.h, SyncBatchNorm::Forward/Backward) blocks each
# device's call in a Barrier keyed by the layer's prefix until all `ndev` calls have arrived. Each CPU
# context has its own engine workers (threaded_engine_perdevice.cc, cpu_normal_workers_ by dev_id,
# MXNET_CPU_WORKER_NTHREADS each), but all CPU contexts share ONE round-robin pool of temporary workspaces
# (src/resource.cc, ResourceManagerImpl, MXNET_CPU_TEMP_COPY copies; each GPU has its own), each copy an
# engine variable: a device's next op can wait for the copy held by the other device's op blocked in the
# barrier. Observed: a 2-layer conv+SyncBatchNorm net on 2 CPU contexts hangs with the defaults and with
# MXNET_CPU_WORKER_NTHREADS=2 alone, and is exact (gradients within 1e-6 relative of 1-device BatchNorm,
# hybridized or not) with MXNET_CPU_WORKER_NTHREADS=2 and MXNET_CPU_TEMP_COPY=64 (tests/test_syncbn_cpu.py).
# The real network does not follow (resnet50 FCN, crop 32, one step through train_one_epoch, 4 workers per
# device, 4096 copies): hybridized it hangs (one device's SyncBatchNorm forward waits in the barrier, every
# other worker idle) unless the heads' Dropout rate is 0 -- likely the CPU random resource, also one for all
# CPU contexts (resource.cc, MXNET_CPU_PARALLEL_RAND_COPY), not verified; and when it runs, the step on 2
# devices differs from SyncBatchNorm on 1 device by up to 20 % of the update (layer4 convolutions; 1-device
# SyncBatchNorm and BatchNorm also differ by up to 32 %). Causes not found in the time available. (After
# that first step device 0's running mean/var read as unchanged on 2 devices with plain BatchNorm too: not
# SyncBatchNorm's doing.)
SYNCBN_ON_CPU = (
    "MXNet 1.9.1's SyncBatchNorm deadlocks over several CPU contexts with our hybridized network and did not"
    " match 1 device when it ran (see network.py), so it only runs on GPUs"
)
MODEL_CHANNEL = "model"
PRETRAINED_CHANNEL = "pretrained"


def build_training_network(job: TrainingJob, contexts: List[mx.Context]) -> mx.gluon.HybridBlock:
    """The network at crop size (with the auxiliary head when aux_loss), weights loaded, on `contexts`."""
    config = job.config
    if config.precision_dtype == FLOAT16:
        init_mixed_precision()  # before the network is built: AMP patches the operators it is made of
    syncbn_devices = len(contexts) if config.syncbn and contexts[0].device_type == "gpu" else 0
    if config.syncbn and not syncbn_devices and len(contexts) > 1:
        log.warning("syncbn is set but training runs on CPU contexts: plain BatchNorm. %s", SYNCBN_ON_CPU)
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
