#!/usr/bin/env bash
# One curl request per task against TorchServe (shipped config: http://127.0.0.1:8080), plus
# the same image sent as base64 JSON. Run from the directory TorchServe was started from, or
# set KEY_FILE:
#   bash examples/curl.sh [image-file]          default image: scikit-image's astronaut photo
#   URL=http://127.0.0.1:8080 KEY_FILE=key_file.json bash examples/curl.sh photo.jpg
#   KEY_FILE=build/torchserve/key_file.json bash examples/curl.sh     the demo's server (run.sh demo --keep-running)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
URL=${URL:-http://127.0.0.1:8080}
KEY_FILE=${KEY_FILE:-key_file.json}
# Python only extracts the token and writes the default photo; the repository venv has scikit-image.
PYTHON=${PYTHON:-$( [ -x "$here/../.venv/bin/python" ] && echo "$here/../.venv/bin/python" || echo python3 )}

IMAGE=${1:-}
if [ -z "$IMAGE" ]; then
  IMAGE=$(mktemp --suffix=.jpg)
  trap 'rm -f "$IMAGE"' EXIT
  "$PYTHON" -c 'import sys, skimage.data; from PIL import Image; Image.fromarray(skimage.data.astronaut()).save(sys.argv[1], quality=92)' "$IMAGE"
fi

# Token authorization is on: the inference key is in key_file.json.
[ -f "$KEY_FILE" ] || { echo "no $KEY_FILE: run from the directory TorchServe was started from, or set KEY_FILE" >&2; exit 1; }
TOKEN=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["inference"]["key"])' "$KEY_FILE")
AUTH="Authorization: Bearer $TOKEN"
# Say the body is binary: curl's default (a urlencoded form) makes the frontend fail with a 500.
RAW="Content-Type: application/octet-stream"
# The segmentation mask is a long base64 PNG: shorten it for the terminal.
short_mask='import json, sys; a = json.load(sys.stdin); a.get("mask") and a.update(mask=a["mask"][:40] + "..."); print(json.dumps(a))'

echo "note: the default archives have random weights; answers show the format, not knowledge"

echo "== classification_onnx: the raw image bytes as the body"
curl -sS --fail-with-body -X POST "$URL/predictions/classification_onnx" -H "$AUTH" -H "$RAW" --data-binary "@$IMAGE"
echo

echo "== classification_onnx: the same image as JSON {\"data\": \"<base64>\"}"
printf '{"data": "%s"}' "$(base64 < "$IMAGE" | tr -d '\n')" |
  curl -sS --fail-with-body -X POST "$URL/predictions/classification_onnx" -H "$AUTH" \
       -H "Content-Type: application/json" --data-binary @-
echo

echo "== detection_onnx: boxes [x1, y1, x2, y2] in the image's pixels (first 600 characters)"
curl -sS --fail-with-body -X POST "$URL/predictions/detection_onnx" -H "$AUTH" -H "$RAW" --data-binary "@$IMAGE" | cut -c1-600
echo

echo "== segmentation_onnx: mask as base64 PNG (shortened) and per-class fractions"
curl -sS --fail-with-body -X POST "$URL/predictions/segmentation_onnx" -H "$AUTH" -H "$RAW" --data-binary "@$IMAGE" | "$PYTHON" -c "$short_mask"
