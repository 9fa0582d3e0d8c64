#!/usr/bin/env bash
# Build .mar archives into model_store/.
#   ./archive.sh                 the six default archives: {classification,segmentation,detection}
#                                x {torchscript,onnx}, exported from torchvision with RANDOM weights
#   ./archive.sh --model F ...   one archive of your own model (see: ./archive.sh --help)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}

if [ $# -gt 0 ]; then
  exec "$PY" -m tsvision archive "$@"
fi

for task in classification segmentation detection; do
  "$PY" -m tsvision export --task "$task" --out "build/$task" 2> >(grep -v '^\[torch.onnx\]' >&2)
  for backend in torchscript:model.pt onnx:model.onnx; do
    "$PY" -m tsvision archive --model "build/$task/${backend#*:}" --settings "build/$task/settings.json" \
      --name "${task}_${backend%%:*}" --store model_store
  done
done
ls -l model_store/*.mar
