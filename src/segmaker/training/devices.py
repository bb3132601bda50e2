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
from segmaker.gpus import mxnet_gpu_count as visible_gpu_count  # noqa: F401 (training and serving share it)


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
    """The role from `environment.ResourceConfig`; one host is all this version trains on."""
    if resource_config.world_size > 1:
        hosts = ", ".join(resource_config.hosts)
        raise UserError(
            f"multi-host training is not supported yet: the job has {resource_config.world_size} hosts"
            f" ({hosts}); use instance_count=1"
        )
    return WorkerRole(resource_config.rank, resource_config.world_size, resource_config.current_host)


def training_contexts(num_gpus: int, cpu_devices: int) -> List[mx.Context]:
    """All visible GPUs, else `cpu_devices` CPU contexts (the same batch-splitting code path)."""
    if num_gpus > 0:
        return [mx.gpu(i) for i in range(num_gpus)]
    return [mx.cpu(i) for i in range(cpu_devices)]


def resolve_kvstore(requested: str, contexts: List[mx.Context]) -> str:
    """`auto`: reduce on the GPUs when there are several, else in host memory."""
    if requested != "auto":
        return requested
    gpu_count = sum(1 for ctx in contexts if ctx.device_type == "gpu")
    return "device" if gpu_count > 1 else "local"


def check_precision(precision_dtype: str, contexts: List[mx.Context]) -> None:
    """float16 needs GPUs: MXNet 1.9.1 has no float16 matrix product on the CPU (its convolutions fail
    with "FP16 gemm on cpu not implemented!")."""
    if precision_dtype == "float16" and any(ctx.device_type != "gpu" for ctx in contexts):
        raise UserError(
            "precision_dtype float16 needs GPUs, but this job trains on the CPU (MXNet has no float16"
            " matrix product on the CPU); use precision_dtype float32"
        )
