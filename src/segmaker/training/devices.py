"""Which devices train, how gradients are reduced, and which worker this process is.

Every device decision lives here so the loop only sees a list of contexts and a `WorkerRole`.
Multi-host training (SPEC §9) plugs in through `worker_role` and `resolve_kvstore`: the loop already
asks only "am I the main worker?" and sums confusion-matrix counts.
"""

from dataclasses import dataclass
from typing import List

import mxnet as mx

from segmaker.environment import ResourceConfig
from segmaker.errors import UserError


@dataclass(frozen=True)
class WorkerRole:
    """This process's place among the training hosts."""

    rank: int = 0
    world_size: int = 1
    host: str = "algo-1"

    @property
    def is_main(self) -> bool:
        # Only the main worker writes the model, the outputs and the checkpoints.
        return self.rank == 0


def worker_role(resource_config: ResourceConfig) -> WorkerRole:
    """The role from `environment.ResourceConfig`: rank = position in the sorted host list, algo-1 is main."""
    return WorkerRole(resource_config.rank, resource_config.world_size, resource_config.current_host)


def training_contexts(num_gpus: int, cpu_devices: int) -> List[mx.Context]:
    """All visible GPUs, else `cpu_devices` CPU contexts (the same batch-splitting code path)."""
    if num_gpus > 0:
        return [mx.gpu(i) for i in range(num_gpus)]
    return [mx.cpu(i) for i in range(cpu_devices)]


DIST_KVSTORES = ("dist_sync", "dist_device_sync", "dist_async")


def resolve_kvstore(requested: str, contexts: List[mx.Context], world_size: int = 1) -> str:
    """The kvstore type. `auto`: on one host, reduce on the GPUs when there are several, else in host
    memory; on several hosts, MXNet's parameter server (`dist_device_sync` with GPUs, else `dist_sync`)."""
    has_gpus = any(ctx.device_type == "gpu" for ctx in contexts)
    if requested == "auto":
        if world_size > 1:
            return "dist_device_sync" if has_gpus else "dist_sync"
        gpu_count = sum(1 for ctx in contexts if ctx.device_type == "gpu")
        return "device" if gpu_count > 1 else "local"
    if requested in DIST_KVSTORES and world_size == 1:
        raise UserError(
            f"kvstore {requested} needs several hosts (instance_count >= 2), but this job runs on one;"
            " use kvstore auto, local or device"
        )
    if requested not in DIST_KVSTORES and world_size > 1:
        raise UserError(
            f"kvstore {requested} reduces gradients within one host, but this job runs on {world_size} hosts;"
            " use kvstore auto, dist_sync or dist_device_sync"
        )
    if requested == "dist_async":
        raise UserError(
            "kvstore dist_async is not supported: its servers apply each host's gradient with an optimizer"
            " pickled to them once, so segmaker's per-iteration learning-rate schedule and global-batch loss"
            " cannot reach them; use kvstore dist_sync or dist_device_sync (or auto)"
        )
    return requested


def check_precision(precision_dtype: str, contexts: List[mx.Context]) -> None:
    """float16 needs GPUs: MXNet 1.9.1 has no float16 matrix product on the CPU (its convolutions fail
    with "FP16 gemm on cpu not implemented!")."""
    if precision_dtype == "float16" and any(ctx.device_type != "gpu" for ctx in contexts):
        raise UserError(
            "precision_dtype float16 needs GPUs, but this job trains on the CPU (MXNet has no float16"
            " matrix product on the CPU); use precision_dtype float32"
        )
