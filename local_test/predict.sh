#!/usr/bin/env bash
# Send one image to the running server and save the answer.
#
#   local_test/predict.sh IMAGE_FILE [OUTPUT [ACCEPT]]
#
# ACCEPT: image/png (default: the class-id mask), application/json, application/x-recordio-protobuf.
# OUTPUT defaults to IMAGE_FILE's name with .mask.png (or .json / .recordio) in the current folder.
set -euo pipefail
# shellcheck source=local_test/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

INPUT="${1:?usage: predict.sh IMAGE_FILE [OUTPUT [ACCEPT]]}"
ACCEPT="${3:-image/png}"
[ -r "$INPUT" ] || die "cannot read $INPUT"
case "$ACCEPT" in
    image/png) SUFFIX=.mask.png ;;
    application/json) SUFFIX=.json ;;
    *) SUFFIX=.recordio ;;
esac
OUTPUT="${2:-$(basename "${INPUT%.*}")$SUFFIX}"
case "$INPUT" in
    *.png|*.PNG) CONTENT_TYPE=image/png ;;
    *) CONTENT_TYPE=image/jpeg ;;
esac

STATUS="$(curl -sS -o "$OUTPUT" -w '%{http_code}' -X POST "http://localhost:$PORT/invocations" \
    -H "Content-Type: $CONTENT_TYPE" -H "Accept: $ACCEPT" --data-binary "@$INPUT")" \
    || die "no answer from http://localhost:$PORT (is serve_local.sh running?)"
if [ "$STATUS" != 200 ]; then
    echo "HTTP $STATUS: $(cat "$OUTPUT")" >&2
    rm -f "$OUTPUT"
    exit 1
fi
echo "$OUTPUT"
