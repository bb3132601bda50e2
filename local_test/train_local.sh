#!/usr/bin/env bash
# Train in the image on the sample /opt/ml tree, as SageMaker would: `docker run -v TREE:/opt/ml IMAGE train`.
#
#   local_test/train_local.sh [SOURCE_TREE]      (default: local_test/test_dir)
#   IMAGE=segmaker:gpu DOCKER_ARGS="--gpus all" local_test/train_local.sh
#
# The tree is copied to $WORK_DIR/opt_ml first (default /tmp/segmaker-local); the model lands in
# $WORK_DIR/opt_ml/model, metrics and plots in $WORK_DIR/opt_ml/output/data.
set -euo pipefail
# shellcheck source=local_test/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

SOURCE="${1:-$LOCAL_TEST_DIR/test_dir}"
[ -d "$SOURCE/input" ] || die "$SOURCE is not an /opt/ml tree (no input/ folder)"
docker image inspect "$IMAGE" >/dev/null 2>&1 || die "no image $IMAGE: build it with 'make image'"

rm -rf "$OPT_ML"
mkdir -p "$WORK_DIR"
cp -r "$SOURCE" "$OPT_ML"
mkdir -p "$OPT_ML/model" "$OPT_ML/output"

echo "training in $IMAGE on $OPT_ML"
# shellcheck disable=SC2086  # DOCKER_ARGS is a list of options on purpose
docker run --rm ${DOCKER_ARGS:-} -v "$OPT_ML:/opt/ml" "$IMAGE" train \
    || die "training failed: $(cat "$OPT_ML/output/failure" 2>/dev/null || echo 'see the log above')"
echo "model:"; ls -l "$OPT_ML/model"
