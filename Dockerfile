# segmaker: train and serve GluonCV semantic segmentation on SageMaker (`docker run IMAGE train|serve`).
#
# GPU flavour (default):  docker build -t segmaker:gpu .
# CPU flavour:            docker build -t segmaker:cpu --build-arg BASE_IMAGE=debian:bookworm-slim \
#                                      --build-arg FLAVOUR=cpu .
# Every argument, the lock files, the extra-CA and wheelhouse options, and the local base image: docs/IMAGE.md.

# The base must be Debian or Ubuntu (apt) with the Python its flavour's lock is resolved for: 3.11 for CPU
# (Debian bookworm), 3.8 for GPU (Ubuntu 20.04). For the GPU flavour it must carry the CUDA 11.x runtime and cuDNN 8
# that mxnet-cu112 links against (it bundles neither).
# Stages: system (OS packages) -> build-base (venv, CA, locked pip) -> deps (locked dependencies, weights) ->
# app (segmaker); the final image is system plus /opt/segmaker from deps and app.
ARG BASE_IMAGE=nvidia/cuda:11.2.2-cudnn8-runtime-ubuntu20.04

# ---------------------------------------------------------------------------------------------------------------
# system: the OS packages both the build and the final image need.
FROM ${BASE_IMAGE} AS system
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG DEBIAN_FRONTEND=noninteractive
COPY container/install_system_packages.sh /tmp/install_system_packages.sh
RUN bash /tmp/install_system_packages.sh runtime && rm /tmp/install_system_packages.sh

# ---------------------------------------------------------------------------------------------------------------
# build-base: what every build stage shares: a virtualenv with the locked build tools, extra CA certificates and
# pip's settings. The final image copies only /opt/segmaker out of the build stages, so extra CA certificates, the
# wheelhouse and pip's cache never reach it.
FROM system AS build-base
ARG DEBIAN_FRONTEND=noninteractive
# true: pip installs from container/wheelhouse/ only, with no index (builds without access to PyPI).
ARG WHEELHOUSE_ONLY=false
COPY container/install_system_packages.sh /tmp/install_system_packages.sh
RUN bash /tmp/install_system_packages.sh build

# Extra CA certificates (*.crt), e.g. a TLS-inspecting proxy's, trusted by apt, pip and the weight download.
COPY container/extra-ca-certificates/ /usr/local/share/ca-certificates/segmaker-extra/
RUN update-ca-certificates >/dev/null
# pip reads PIP_NO_INDEX=true/false as a flag, so the build argument switches the index off directly.
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_FIND_LINKS=/tmp/wheelhouse \
    PIP_NO_INDEX=${WHEELHOUSE_ONLY} \
    MXNET_HOME=/opt/segmaker/mxnet \
    PATH=/opt/segmaker/venv/bin:$PATH
COPY container/wheelhouse/ /tmp/wheelhouse/
# Every Python package comes from a lock file with hashes (`make lock`); --no-deps because a lock is complete.
# The build tools first: Ubuntu 20.04's venv brings pip 20.0, which cannot read the dependencies' manylinux_2_28 tags.
COPY container/requirements-build.lock /tmp/build/
RUN python3 -m venv /opt/segmaker/venv \
    && pip install --quiet --require-hashes --no-deps -r /tmp/build/requirements-build.lock

# ---------------------------------------------------------------------------------------------------------------
# deps: the flavour's locked dependencies (MXNet, GluonCV, ...) in the venv, plus the baked-in ImageNet weights.
# Only the lock file is copied in, so edits elsewhere (pyproject.toml's version, src/) keep this layer cached.
FROM build-base AS deps
ARG FLAVOUR=gpu
ARG PRETRAINED_WEIGHTS=bake
ARG WEIGHTS_REPO_URL=https://apache-mxnet.s3-accelerate.dualstack.amazonaws.com/
COPY container/requirements-${FLAVOUR}.lock /tmp/build/requirements.lock
# A lock holds the wheels of one Python version (the --python-version in its header): another base's Python is
# refused by name here rather than by pip failing on the first wheel it cannot find.
ARG BASE_IMAGE
RUN locked="$(sed -n '/--python-version/{s/.*--python-version \([0-9.]*\).*/\1/p;q}' /tmp/build/requirements.lock)" \
    && base="$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" \
    && if [ "$locked" != "$base" ]; then \
        echo "container/requirements-${FLAVOUR}.lock is for Python $locked; the base $BASE_IMAGE has $base" >&2; \
        exit 1; \
    fi \
    && pip install --quiet --require-hashes --no-deps -r /tmp/build/requirements.lock \
    && python -c "import mxnet, gluoncv; print('mxnet', mxnet.__version__, 'imports')"

# GluonCV's own downloader: model_store names, and the SHA-1 it checks every file against.
COPY container/fetch_pretrained_weights.py /tmp/build/
RUN if [ "$PRETRAINED_WEIGHTS" = bake ]; then \
        python /tmp/build/fetch_pretrained_weights.py --repo-url "$WEIGHTS_REPO_URL" \
            "$MXNET_HOME/models" resnet50_v1s resnet101_v1s; \
    elif [ "$PRETRAINED_WEIGHTS" = skip ]; then \
        mkdir -p "$MXNET_HOME/models" && echo "pretrained weights skipped (PRETRAINED_WEIGHTS=skip)"; \
    else \
        echo "PRETRAINED_WEIGHTS must be bake or skip, not '$PRETRAINED_WEIGHTS'" >&2 && exit 1; \
    fi

# segmaker itself goes to its own folder (on the venv's path through a .pth file), so that a change to src/
# adds a layer of a few hundred KB to the final image instead of a new copy of the whole venv.
RUN echo /opt/segmaker/app > "$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/segmaker-app.pth"

# ---------------------------------------------------------------------------------------------------------------
# app: the segmaker package, built from this repository.
FROM deps AS app
COPY pyproject.toml README.md /tmp/build/src/
COPY src/ /tmp/build/src/src/
# Built with the locked setuptools and wheel of the venv (no isolated build environment fetched from the index);
# pip check then confirms that the locked set satisfies segmaker's own requirements.
RUN pip install --quiet --no-deps --no-build-isolation --no-warn-script-location --target /opt/segmaker/app \
        /tmp/build/src \
    && PATH=/opt/segmaker/app/bin:$PATH segmaker --help >/dev/null \
    && pip check

# ---------------------------------------------------------------------------------------------------------------
# The image SageMaker runs: `train` or `serve` as the argument of the exec-form ENTRYPOINT, so SIGTERM from
# `docker stop` / StopTrainingJob reaches Python directly (no shell in between).
FROM system
COPY --from=deps /opt/segmaker /opt/segmaker
COPY --from=app /opt/segmaker/app /opt/segmaker/app
ENV PATH=/opt/segmaker/app/bin:/opt/segmaker/venv/bin:$PATH \
    MXNET_HOME=/opt/segmaker/mxnet \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LANG=C.UTF-8
LABEL com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true \
      org.opencontainers.image.title="segmaker" \
      org.opencontainers.image.description="GluonCV semantic segmentation (FCN/PSPNet/DeepLabV3) for SageMaker"
EXPOSE 8080
WORKDIR /opt/segmaker
ENTRYPOINT ["segmaker"]
CMD ["--help"]
