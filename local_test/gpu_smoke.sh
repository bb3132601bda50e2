#!/usr/bin/env bash
# GPU smoke test of the GPU image, for a host with an NVIDIA GPU, driver >= 460 and the NVIDIA container toolkit
# (`docker run --gpus all` must work). Cannot run on a host without a GPU.
#
#   IMAGE=segmaker:gpu local_test/gpu_smoke.sh
#
# Checks, in order: MXNet sees the GPUs and was built with CUDA/cuDNN/NCCL; a convolution runs on GPU 0
# (cuDNN and this GPU's architecture: mxnet-cu112 has code for sm_50/60/70/80/86 only); an all-reduce over
# every GPU (NCCL); then a short training run on the sample tree and one prediction from the served model.
set -euo pipefail
export IMAGE="${IMAGE:-segmaker:gpu}"
# shellcheck source=local_test/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

command -v nvidia-smi >/dev/null || die "no nvidia-smi on this host: it needs an NVIDIA GPU and driver"
nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv

echo "== MXNet on the GPUs"
docker run --rm --gpus all --entrypoint python "$IMAGE" -c '
import mxnet as mx
features = mx.runtime.Features()
for name in ("CUDA", "CUDNN", "NCCL"):
    assert features.is_enabled(name), name + " is not enabled in this MXNet build"
count = mx.context.num_gpus()
assert count > 0, "MXNet sees no GPU"
x = mx.nd.random.uniform(shape=(2, 3, 64, 64), ctx=mx.gpu(0))
w = mx.nd.random.uniform(shape=(8, 3, 3, 3), ctx=mx.gpu(0))
y = mx.nd.Convolution(x, w, kernel=(3, 3), num_filter=8, no_bias=True)
print("GPUs:", count, "conv output", y.shape, "sum", float(y.sum().asscalar()))
kv = mx.kv.create("nccl")
kv.init(0, mx.nd.zeros((4,)))
kv.push(0, [mx.nd.ones((4,), ctx=mx.gpu(i)) for i in range(count)])
out = mx.nd.zeros((4,), ctx=mx.gpu(0))
kv.pull(0, out=out)
assert out.asnumpy().tolist() == [count] * 4, out
print("NCCL all-reduce over", count, "GPU(s): ok")
'

echo "== training on the sample tree"
DOCKER_ARGS="--gpus all" "$LOCAL_TEST_DIR/train_local.sh"

echo "== serving and one prediction"
CONTAINER_NAME=segmaker-gpu-smoke DOCKER_ARGS="--gpus all -d" "$LOCAL_TEST_DIR/serve_local.sh" >/dev/null
trap 'docker stop segmaker-gpu-smoke >/dev/null 2>&1 || true' EXIT
for _ in $(seq 60); do curl -sf "http://localhost:$PORT/ping" >/dev/null && break; sleep 2; done
SAMPLE="$(find "$LOCAL_TEST_DIR/test_dir/input/data/validation" -name '*.jpg' | head -1)"
"$LOCAL_TEST_DIR/predict.sh" "$SAMPLE" "$WORK_DIR/gpu_smoke.mask.png"
echo "gpu_smoke: all checks passed"
