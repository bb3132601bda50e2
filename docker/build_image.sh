#!/usr/bin/env bash
# Build the segmaker image (the one place that knows the flavours' build arguments; make image, demo.sh and
# build_and_push.sh all call it).
#
#   docker/build_image.sh [--cpu|--gpu] [--tag TAG] [--base IMAGE] [--weights bake|skip]
#                         [--extra-ca-certs FILE] [--wheelhouse] [-- DOCKER_BUILD_ARGS...]
#
#   --cpu              CPU flavour (mxnet, container/requirements-cpu.lock: Python 3.11); default base
#                      segmaker-base:bookworm (docker/make_base_image.sh)
#   --gpu              GPU flavour (mxnet-cu112, container/requirements-gpu.lock: Python 3.8), the default; base
#                      nvidia/cuda:11.2.2-cudnn8-runtime-ubuntu20.04
#   --base IMAGE       another Debian/Ubuntu base with the lock's Python (e.g. debian:bookworm-slim for CPU)
#   --weights skip     leave out the baked ImageNet weights (default: bake; needs the weights' URL reachable)
#   --extra-ca-certs   a PEM file of CA certificates the build must trust (TLS-inspecting proxy); defaults to
#                      $SEGMAKER_EXTRA_CA_CERTS, else to the bundle this host's pip trusts ($PIP_CERT, or
#                      `cert` in pip's configuration files), if any
#   --wheelhouse       pip-download the flavour's locked wheels (hash-checked) on this host into
#                      container/wheelhouse/ first and build with no package index at all
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FLAVOUR=gpu
TAG=""
BASE=""
WEIGHTS=bake
# What this host's pip trusts: $PIP_CERT, else `cert` from pip's configuration files (e.g. /etc/pip.conf).
pip_configured_cert() {
    python3 -m pip config list 2>/dev/null | sed -n "s/^global\.cert='\(.*\)'\$/\1/p" | head -n 1
}
EXTRA_CA="${SEGMAKER_EXTRA_CA_CERTS:-${PIP_CERT:-$(pip_configured_cert || true)}}"
WHEELHOUSE=0
EXTRA_ARGS=()

die() { echo "build_image: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --cpu) FLAVOUR=cpu ;;
        --gpu) FLAVOUR=gpu ;;
        --tag) TAG="${2:?--tag needs a value}"; shift ;;
        --base) BASE="${2:?--base needs a value}"; shift ;;
        --weights) WEIGHTS="${2:?--weights needs bake or skip}"; shift ;;
        --extra-ca-certs) EXTRA_CA="${2:?--extra-ca-certs needs a file}"; shift ;;
        --wheelhouse) WHEELHOUSE=1 ;;
        --) shift; EXTRA_ARGS=("$@"); break ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done
case "$WEIGHTS" in bake|skip) ;; *) die "--weights must be bake or skip, not $WEIGHTS" ;; esac

if [ "$FLAVOUR" = cpu ]; then
    BASE="${BASE:-segmaker-base:bookworm}"; TAG="${TAG:-segmaker:cpu}"
else
    BASE="${BASE:-nvidia/cuda:11.2.2-cudnn8-runtime-ubuntu20.04}"; TAG="${TAG:-segmaker:gpu}"
fi
LOCK="$REPO_ROOT/container/requirements-$FLAVOUR.lock"
BUILD_LOCK="$REPO_ROOT/container/requirements-build.lock"

CA_DIR="$REPO_ROOT/container/extra-ca-certificates"
CA_COPY="$CA_DIR/build-host.crt"
cleanup() { rm -f "$CA_COPY"; }
trap cleanup EXIT
if [ -n "$EXTRA_CA" ]; then
    [ -r "$EXTRA_CA" ] || die "extra CA certificates file $EXTRA_CA is not readable"
    # Lives in the build context only for this build; the Dockerfile uses it in the deps stage only.
    cp "$EXTRA_CA" "$CA_COPY"
fi

# The locks' own wheels for the image's Python and platform, not this host's: the Python version is the one the
# lock was resolved for (its header), the platforms those of glibc 2.28 and older, as `make lock` resolves.
locked_python() {
    sed -n '/--python-version/{s/.*--python-version \([0-9.]*\).*/\1/p;q}' "$1"
}
fill_wheelhouse() {
    local lock="$1" python_version
    python_version="$(locked_python "$lock")"
    [ -n "$python_version" ] || die "$lock names no --python-version in its header (regenerate it with make lock)"
    # The build tools are pure Python (py3-none-any), so the same download serves both flavours' Pythons.
    python3 -m pip download --quiet --dest "$REPO_ROOT/container/wheelhouse" --only-binary=:all: \
        --no-deps --require-hashes --python-version "$python_version" --implementation cp \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
        --platform manylinux1_x86_64 --platform manylinux2010_x86_64 --platform any \
        -r "$lock" -r "$BUILD_LOCK" || die "pip download of $lock into container/wheelhouse failed"
}
BUILD_ARGS=(--build-arg "BASE_IMAGE=$BASE" --build-arg "FLAVOUR=$FLAVOUR" --build-arg "PRETRAINED_WEIGHTS=$WEIGHTS")
if [ "$WHEELHOUSE" = 1 ]; then
    fill_wheelhouse "$LOCK"
    BUILD_ARGS+=(--build-arg WHEELHOUSE_ONLY=true)
fi

command -v docker >/dev/null || die "docker is not installed"
echo "build_image: $TAG ($FLAVOUR, base $BASE, weights $WEIGHTS)"
# The legacy builder: the engine here has no buildx. Extra CA certificates stay in the deps stage anyway.
DOCKER_BUILDKIT="${DOCKER_BUILDKIT:-0}" docker build --tag "$TAG" "${BUILD_ARGS[@]}" \
    ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"} "$REPO_ROOT"
