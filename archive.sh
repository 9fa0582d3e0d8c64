#!/usr/bin/env bash
# Build .mar archives into model_store/.
#   ./archive.sh                 the default archives, all with RANDOM weights: {classification,segmentation,
#                                detection} x {torchscript,onnx} from torchvision, plus yolov8n_onnx
#                                (ultralytics' own exporter), fasterrcnn_onnx (torchvision's smallest
#                                Faster R-CNN, the whole detector), maskrcnn_onnx (instance segmentation)
#                                and keypointrcnn_onnx (keypoints), both on Faster R-CNN's MobileNetV3 320 backbone
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
# Detectors users bring (docs/models.md): YOLOv8n through ultralytics' exporter, and a whole
# scripted/ONNX torchvision Faster R-CNN (random weights, conditioned so a few boxes stand out).
"$PY" -m tsvision export --task detection --arch yolov8n --out build/yolov8n > build/yolov8n.log
tail -n 4 build/yolov8n.log
"$PY" -m tsvision archive --model build/yolov8n/model.onnx --settings build/yolov8n/settings.json \
  --name yolov8n_onnx --store model_store
"$PY" -m tsvision export --task detection --arch fasterrcnn_mobilenet_v3_large_320_fpn --out build/fasterrcnn \
  2> >(grep -v '^\[torch.onnx\]\|Warning\|warnings.warn' >&2)
"$PY" -m tsvision archive --model build/fasterrcnn/model.onnx --settings build/fasterrcnn/settings.json \
  --name fasterrcnn_onnx --store model_store
# Instance segmentation and keypoints (docs/models.md): the smallest Mask R-CNN and Keypoint R-CNN,
# tsvision's own builds on the MobileNetV3-Large 320 FPN backbone of the Faster R-CNN above.
for spec in instance_segmentation:maskrcnn keypoints:keypointrcnn; do
  task=${spec%%:*} name=${spec#*:}
  "$PY" -m tsvision export --task "$task" --out "build/$name" 2> >(grep -v '^\[torch.onnx\]\|Warning\|warnings.warn' >&2)
  "$PY" -m tsvision archive --model "build/$name/model.onnx" --settings "build/$name/settings.json" \
    --name "${name}_onnx" --store model_store
done
ls -l model_store/*.mar
