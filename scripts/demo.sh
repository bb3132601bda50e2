#!/usr/bin/env bash
# The main job in one command (`make demo`), from a fresh clone on a host with Docker and curl:
# make the local base image if needed, build segmaker:cpu, train on local_test/test_dir in the container, serve
# the model, predict one JPEG with curl, save the PNG mask and an overlay, stop the server.
#
#   scripts/demo.sh [OUTPUT_DIR]      (default: a new folder under /tmp; the repository is never written to)
#
# BASE_IMAGE=debian:bookworm-slim scripts/demo.sh builds on a pulled base instead of the local one.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE="${IMAGE:-segmaker:cpu}"
OUT="${1:-$(mktemp -d "${TMPDIR:-/tmp}/segmaker-demo.XXXXXX")}"
CONTAINER="segmaker-demo-$$"

say() { echo "== demo: $*"; }
die() { echo "demo: $*" >&2; exit 1; }
command -v docker >/dev/null || die "docker is not installed"
command -v curl >/dev/null || die "curl is not installed"

say "1/5 base image and $IMAGE"
mkdir -p "$OUT"
if [ -z "${BASE_IMAGE:-}" ]; then
    "$REPO_ROOT/docker/make_base_image.sh"
fi
# The first build downloads and installs MXNet, GluonCV and friends for minutes without a word: show each
# Dockerfile step as it starts, with the time so far, and a heartbeat while a long step runs.
BUILD_LOG="$OUT/image_build.log"
START=$SECONDS
( while sleep 30; do echo "   [$((SECONDS - START))s] still building (full log: $BUILD_LOG)"; done ) &
HEARTBEAT=$!
trap 'kill "$HEARTBEAT" 2>/dev/null || true' EXIT
"$REPO_ROOT/docker/build_image.sh" --cpu --weights skip --tag "$IMAGE" ${BASE_IMAGE:+--base "$BASE_IMAGE"} 2>&1 \
    | tee "$BUILD_LOG" | while IFS= read -r line; do
        case "$line" in
            "Step "* | build_image:* | Successfully*) echo "   [$((SECONDS - START))s] ${line:0:110}" ;;
        esac
    done || die "the image build failed: see $BUILD_LOG"
kill "$HEARTBEAT" 2>/dev/null || true
trap - EXIT
docker image inspect "$IMAGE" >/dev/null 2>&1 || die "the image build failed: see $BUILD_LOG"

say "2/5 training on local_test/test_dir (a copy in $OUT/opt_ml): a ResNet-50 FCN from random weights, 10 epochs"
rm -rf "$OUT/opt_ml"
cp -r "$REPO_ROOT/local_test/test_dir" "$OUT/opt_ml"
docker run --rm -v "$OUT/opt_ml:/opt/ml" "$IMAGE" train \
    || die "training failed: $(cat "$OUT/opt_ml/output/failure" 2>/dev/null)"

say "3/5 serving the model"
trap 'docker stop "$CONTAINER" >/dev/null 2>&1 || true' EXIT
# Port 0 on the host: Docker picks a free one, so the demo never collides with another server.
docker run -d --rm --name "$CONTAINER" -p 127.0.0.1::8080 -v "$OUT/opt_ml/model:/opt/ml/model:ro" \
    "$IMAGE" serve >/dev/null
URL="http://$(docker port "$CONTAINER" 8080/tcp | head -1)"
for _ in $(seq 120); do
    curl -sf "$URL/ping" >/dev/null && break
    docker inspect "$CONTAINER" >/dev/null 2>&1 || die "the server exited; run local_test/serve_local.sh to see why"
    sleep 1
done
curl -sf "$URL/ping" >/dev/null || die "the server did not answer /ping within 120 s"

say "4/5 predicting with curl"
SAMPLE="$(find "$OUT/opt_ml/input/data/validation" -name '*.jpg' | sort | head -1)"
cp "$SAMPLE" "$OUT/input.jpg"
curl -sf -X POST "$URL/invocations" -H "Content-Type: image/jpeg" -H "Accept: image/png" \
    --data-binary "@$OUT/input.jpg" -o "$OUT/mask.png" || die "POST /invocations failed"

say "5/5 overlay, figures and stop"
# The image's own Python draws the overlay and reads the figures, so the host needs nothing but Docker and curl.
TRUTH="$(basename "$SAMPLE" .jpg).png"
cp "$OUT/opt_ml/input/data/validation_annotation/$TRUTH" "$OUT/input_truth.png"
docker run --rm --entrypoint python -v "$OUT:/demo" "$IMAGE" -c '
import json
import numpy as np
from PIL import Image
from segmaker.outputs import overlay
image = np.asarray(Image.open("/demo/input.jpg").convert("RGB"))
mask = np.asarray(Image.open("/demo/mask.png"))
truth = np.asarray(Image.open("/demo/input_truth.png"))
assert mask.shape == image.shape[:2], (mask.shape, image.shape)
model = json.load(open("/demo/opt_ml/model/segmaker.json"))
Image.fromarray(overlay(image, mask, model["num_classes"])).save("/demo/overlay.png")
history = json.load(open("/demo/opt_ml/output/data/metrics.json"))
best = max(history, key=lambda row: row["mIOU"])
print("train loss by epoch:     " + " ".join("%.3f" % row["train_loss"] for row in history))
print("validation mIOU by epoch: " + " ".join("%.3f" % row["mIOU"] for row in history))
print("best epoch %d: mIOU %.3f, Dice %.3f, pixel accuracy %.3f" % (
    best["epoch"], best["mIOU"], best["dice"], best["pixel_accuracy"]))
print("per class (best epoch): " + ", ".join(
    "%s IoU %.3f" % (name, value) for name, value in best["iou_per_class"].items() if value is not None))
names = model["class_names"]
print("served mask of input.jpg: %.1f %% of its pixels as in the true mask; classes %s" % (
    100 * float(np.mean(mask == truth)), ", ".join(names[c] for c in np.unique(mask))))
'
docker stop "$CONTAINER" >/dev/null
trap - EXIT
echo
echo "demo done. Look at:"
echo "  report   $OUT/opt_ml/output/data/report.html   (curves, per-class table, confusion matrix, examples)"
echo "  input    $OUT/input.jpg"
echo "  mask     $OUT/mask.png     (8-bit PNG of class ids, same size as the input)"
echo "  overlay  $OUT/overlay.png  (the served mask over the input)"
echo "  plots    $OUT/opt_ml/output/data/{training_curves,confusion_matrix,validation_predictions}.png"
echo "  model    $OUT/opt_ml/model/"
