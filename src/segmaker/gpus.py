"""How many GPUs there are: MXNet's own answer, the one count training and serving share.

Counting device files is not enough: the CPU image on a GPU host sees /dev/nvidia0, yet its MXNet cannot
use it (`mx.gpu(0)` fails at the first operation). So the answer is always MXNet's. The model server's master
must not initialise MXNet (or CUDA) before it forks its workers, so it asks in a short-lived child process,
and only when a GPU device is visible at all (on a CPU host that costs nothing).
"""

import logging
import subprocess
import sys

LOG = logging.getLogger(__name__)

_ASK_SECONDS = 120  # importing MXNet and initialising CUDA on a cold host


def mxnet_gpu_count() -> int:
    """GPUs this process's MXNet can use; 0 for a CPU-only build or without a driver (which raise)."""
    import mxnet as mx

    try:
        return int(mx.context.num_gpus())
    except mx.MXNetError:
        return 0


def mxnet_gpu_count_in_child() -> int:
    """`mxnet_gpu_count()` asked in a child process: this one never loads MXNet or CUDA (0 on error)."""
    code = "from segmaker.gpus import mxnet_gpu_count; print(mxnet_gpu_count())"
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=_ASK_SECONDS, check=True)
        return int(done.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, OSError, ValueError, IndexError) as exc:
        LOG.warning("cannot ask MXNet how many GPUs it can use (%s); serving on the CPU", exc)
        return 0


def gpu_count_before_fork(device_files_visible: int) -> int:
    """The GPU count for a process that must not load MXNet: 0 when no GPU device is visible
    (`environment.visible_gpu_devices`), else MXNet's answer from a child process."""
    return mxnet_gpu_count_in_child() if device_files_visible else 0
