# segmaker: train and serve GluonCV semantic segmentation on SageMaker (`docker run IMAGE train|serve`).
#
# GPU flavour (default):  docker build -t segmaker:gpu .
# CPU flavour:            docker build -t segmaker:cpu --build-arg BASE_IMAGE=debian:bookworm-slim \
#                                      --build-arg MXNET_PACKAGE=mxnet==1.9.1 .
# Every argument, the extra-CA and wheelhouse options, and the local base image: docs/IMAGE.md.

# The base must be Debian or Ubuntu (apt). For the GPU flavour it must carry the CUDA 11.x runtime and cuDNN 8
# that mxnet-cu112 links against (it bundles neither).
# Stages: system (OS packages) -> deps (venv, weights) -> app (segmaker); the final image copies from deps and app.
ARG BASE_IMAGE=nvidia/cuda:11.2.2-cudnn8-runtime-ubuntu20.04

# ---------------------------------------------------------------------------------------------------------------
# system: the OS packages both the build and the final image need.
FROM ${BASE_IMAGE} AS system
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG DEBIAN_FRONTEND=noninteractive
COPY container/install_system_packages.sh /tmp/install_system_packages.sh
RUN bash /tmp/install_system_packages.sh runtime && rm /tmp/install_system_packages.sh

# ---------------------------------------------------------------------------------------------------------------
# deps: a virtualenv with MXNet, GluonCV and the other dependencies, plus the baked-in ImageNet weights. Only
# /opt/segmaker is copied from here, so extra CA certificates, the wheelhouse and pip's cache never reach the
# final image.
FROM system AS deps
ARG DEBIAN_FRONTEND=noninteractive
ARG MXNET_PACKAGE=mxnet-cu112==1.9.1
# true: install from container/wheelhouse/ only (no index): for builds without access to PyPI.
ARG WHEELHOUSE_ONLY=false
ARG PRETRAINED_WEIGHTS=bake
ARG WEIGHTS_REPO_URL=https://apache-mxnet.s3-accelerate.dualstack.amazonaws.com/

COPY container/install_system_packages.sh /tmp/install_system_packages.sh
RUN bash /tmp/install_system_packages.sh build

# Extra CA certificates (*.crt), e.g. a TLS-inspecting proxy's, trusted by apt, pip and the weight download.
COPY container/extra-ca-certificates/ /usr/local/share/ca-certificates/segmaker-extra/
RUN update-ca-certificates >/dev/null
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_FIND_LINKS=/tmp/wheelhouse \
    MXNET_HOME=/opt/segmaker/mxnet \
    PATH=/opt/segmaker/venv/bin:$PATH
COPY container/wheelhouse/ /tmp/wheelhouse/

# Dependencies before the source, so editing src/ does not reinstall MXNet.
COPY pyproject.toml container/requirements_from_pyproject.py /tmp/build/
RUN if [ "$WHEELHOUSE_ONLY" = true ]; then export PIP_NO_INDEX=1; fi \
    && python3 -m venv /opt/segmaker/venv \
    && pip install --quiet --upgrade "pip>=23,<25" \
    && python /tmp/build/requirements_from_pyproject.py /tmp/build/pyproject.toml "$MXNET_PACKAGE" \
        > /tmp/build/requirements.txt \
    && pip install --quiet -r /tmp/build/requirements.txt \
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
ARG WHEELHOUSE_ONLY=false
COPY pyproject.toml README.md /tmp/build/src/
COPY src/ /tmp/build/src/src/
RUN if [ "$WHEELHOUSE_ONLY" = true ]; then export PIP_NO_INDEX=1; fi \
    && pip install --quiet --no-deps --no-warn-script-location --target /opt/segmaker/app /tmp/build/src \
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
