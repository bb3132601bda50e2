#!/usr/bin/env bash
# Serve the model that train_local.sh left, on http://localhost:$PORT (default 8080), in the foreground.
# Ctrl-C (or `docker stop segmaker-local`) stops it.
#
#   local_test/serve_local.sh [MODEL_DIR]      (default: $WORK_DIR/opt_ml/model)
set -euo pipefail
# shellcheck source=local_test/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

MODEL_DIR="${1:-$OPT_ML/model}"
[ -d "$MODEL_DIR" ] || die "no model folder $MODEL_DIR: run local_test/train_local.sh first"
MODEL_DIR="$(cd "$MODEL_DIR" && pwd)"

echo "serving $MODEL_DIR with $IMAGE on http://localhost:$PORT (Ctrl-C stops)"
# Read-only, as SageMaker mounts the extracted model.tar.gz.
# shellcheck disable=SC2086
exec docker run --rm --name "${CONTAINER_NAME:-segmaker-local}" ${DOCKER_ARGS:-} -p "127.0.0.1:$PORT:8080" \
    -v "$MODEL_DIR:/opt/ml/model:ro" "$IMAGE" serve
