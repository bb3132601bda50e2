#!/usr/bin/env bash
# OS packages of the image, for Debian and Ubuntu bases alike (run inside `docker build`).
#   runtime: Python 3 and the shared libraries the Python wheels load at run time
#   build:   what only the build stages need (venv creation, CA certificate tooling)
set -euo pipefail

# libgomp1, libquadmath0: libmxnet.so and the libgfortran it bundles. libgl1, libglib2.0-0: the cv2 module of
# opencv-python (a GluonCV dependency). ca-certificates: HTTPS from the image (weight downloads, users' scripts).
RUNTIME_PACKAGES=(python3 libgomp1 libquadmath0 libgl1 libglib2.0-0 ca-certificates)
BUILD_PACKAGES=(python3-venv)

install_packages() {
    apt-get update
    apt-get install -y --no-install-recommends "$@"
}

# mxnet-cu112 links against NCCL 2 but does not bundle it. NVIDIA's CUDA 11 runtime images normally ship it
# (and configure NVIDIA's apt repository); install it from there when a CUDA base lacks it.
ensure_nccl_on_cuda_base() {
    if [ ! -d /usr/local/cuda ] || ldconfig -p | grep -q 'libnccl\.so\.2'; then
        return 0
    fi
    echo "CUDA base without NCCL: installing libnccl2"
    apt-get install -y --no-install-recommends libnccl2
}

clean_apt() {
    apt-get clean
    rm -rf /var/lib/apt/lists/*
}

case "${1:-}" in
    runtime) install_packages "${RUNTIME_PACKAGES[@]}"; ensure_nccl_on_cuda_base ;;
    build) install_packages "${BUILD_PACKAGES[@]}" ;;
    *) echo "usage: $0 runtime|build" >&2; exit 2 ;;
esac
clean_apt
