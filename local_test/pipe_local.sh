#!/usr/bin/env bash
# Train in the image in Pipe mode, fed the way SageMaker feeds it: a RecordIO stream per epoch in the FIFOs
# input/data/train_0, train_1, ... written on the host by `segmaker pipe-feed`, read in the container.
#
#   local_test/pipe_local.sh [SOURCE_TREE]      (default: local_test/test_dir)
#   SPLIT_RECORDS_OVER=4096 local_test/pipe_local.sh    # also exercise split records (cflag 1/2/3)
#
# The train channel of SOURCE_TREE (train/ + train_annotation/, or train/images + train/masks) becomes an
# augmented manifest streamed in Pipe mode; validation (if any) stays in File mode, so this also shows the
# File + Pipe mix. Needs segmaker on the host (`make setup`; PYTHON points at its interpreter) and a Linux
# Docker engine: a FIFO in a bind mount connects host and container only when they share one kernel
# (not Docker Desktop's VM).
set -euo pipefail
# shellcheck source=local_test/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

SOURCE="${1:-$LOCAL_TEST_DIR/test_dir}"
PYTHON="${PYTHON:-$LOCAL_TEST_DIR/../.venv/bin/python}"
[ -d "$SOURCE/input" ] || die "$SOURCE is not an /opt/ml tree (no input/ folder)"
[ -x "$PYTHON" ] || die "no Python with segmaker at $PYTHON: run 'make setup' or set PYTHON"
docker image inspect "$IMAGE" >/dev/null 2>&1 || die "no image $IMAGE: build it with 'make image'"

train_dir="$SOURCE/input/data/train"
if [ -d "$train_dir/images" ]; then
    images="$train_dir/images" masks="$train_dir/masks"
else
    images="$train_dir" masks="$SOURCE/input/data/train_annotation"
fi
[ -d "$images" ] && [ -d "$masks" ] || die "no train images and masks in $SOURCE/input/data"

rm -rf "$OPT_ML"
mkdir -p "$WORK_DIR"
cp -r "$SOURCE" "$OPT_ML"
rm -rf "$OPT_ML/input/data/train" "$OPT_ML/input/data/train_annotation"   # Pipe mode: no files, FIFOs
mkdir -p "$OPT_ML/model" "$OPT_ML/output"

manifest="$WORK_DIR/train.manifest.jsonl"
"$PYTHON" -m segmaker.data.pipe_feed make-manifest --images "$images" --masks "$masks" \
    --label-attribute segmentation-ref -o "$manifest"

# Before the container starts: inputdataconfig.json gets the train channel in Pipe mode (the other
# channels stay in File mode), and hyperparameters.json num_training_samples (Pipe mode needs it: the stream has no
# length). The number of epochs says how many FIFOs to feed.
epochs="$("$PYTHON" - "$OPT_ML" "$manifest" <<'EOF'
import json, sys
from pathlib import Path
from segmaker.data.pipe_feed import write_pipe_input_config
from segmaker.environment import Paths
paths, manifest = Paths(Path(sys.argv[1])), Path(sys.argv[2])
write_pipe_input_config(paths, "train")
hp_file = paths.hyperparameters_file
hp = json.loads(hp_file.read_text()) if hp_file.exists() else {}
hp.setdefault("num_training_samples", str(sum(1 for l in manifest.read_text().splitlines() if l.strip())))
hp_file.write_text(json.dumps(hp, indent=2))
print(int(hp.get("epochs", 10)))
EOF
)"

"$PYTHON" -m segmaker.data.pipe_feed --manifest "$manifest" --channel train --base-dir "$OPT_ML" \
    --epochs "$epochs" ${SPLIT_RECORDS_OVER:+--split-records-over "$SPLIT_RECORDS_OVER"} &
feeder=$!
# If training stops early (or fails), the feeder would wait for a reader until its timeout: end it.
trap 'kill "$feeder" 2>/dev/null || true' EXIT

echo "training in $IMAGE on $OPT_ML, train channel in Pipe mode ($epochs epochs fed by pid $feeder)"
# shellcheck disable=SC2086  # DOCKER_ARGS is a list of options on purpose
docker run --rm ${DOCKER_ARGS:-} -v "$OPT_ML:/opt/ml" "$IMAGE" train \
    || die "training failed: $(cat "$OPT_ML/output/failure" 2>/dev/null || echo 'see the log above')"
if kill -0 "$feeder" 2>/dev/null; then
    echo "training read fewer epochs than were fed (early stopping): pipe-feed is stopped"
else
    wait "$feeder" || die "pipe-feed failed (see its messages above)"
fi
echo "model:"; ls -l "$OPT_ML/model"
