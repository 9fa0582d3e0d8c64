#!/bin/sh
# The container's entry point: TorchServe in the foreground, stopped cleanly on SIGTERM/SIGINT.
#
# A shell that traps the signal, rather than `torchserve --foreground` as PID 1: PID 1 ignores
# signals it has no handler for, and torchserve's Python wrapper has none, so `podman stop` and
# Kubernetes would wait out their grace period and SIGKILL it. Here SIGTERM runs `torchserve --stop`
# (SIGTERM to the Java frontend, which stops its workers), then waits for it to exit.
# Extra arguments go to torchserve (e.g. --models NAME=NAME.mar). TSVISION_BIND_ADDRESS (default 0.0.0.0)
# is where the inference APIs (REST and gRPC) listen; management and metrics stay on the loopback.
set -eu
config="$HOME/config.properties"
# TorchServe 0.12 registers a .war from the workflow store through POST /workflows even with the model
# API off (docs/security.md): point it at an empty folder.
mkdir -p "$HOME/no-workflows"
{
  cat /opt/tsvision/container/config.properties
  echo "inference_address=http://${TSVISION_BIND_ADDRESS:-0.0.0.0}:${TSVISION_INFERENCE_PORT:-8080}"
  echo "grpc_inference_address=${TSVISION_BIND_ADDRESS:-0.0.0.0}"
  echo "management_address=http://127.0.0.1:${TSVISION_MANAGEMENT_PORT:-8081}"
  echo "metrics_address=http://127.0.0.1:${TSVISION_METRICS_PORT:-8082}"
  echo "grpc_inference_port=${TSVISION_GRPC_INFERENCE_PORT:-7070}"
  echo "grpc_management_port=${TSVISION_GRPC_MANAGEMENT_PORT:-7071}"
  echo "model_store=${TSVISION_MODEL_STORE:-/opt/tsvision/model-store}"
  echo "token_expiration_min=${TSVISION_TOKEN_EXPIRATION_MIN:-60}"
  echo "workflow_store=$HOME/no-workflows"
} > "$config"
cd "$HOME"  # TorchServe writes key_file.json (the tokens, new at every start) and logs/ here

torchserve --foreground --ncs --ts-config "$config" "$@" &
child=$!
stop() {
  echo "entrypoint: stopping TorchServe"
  torchserve --stop >/dev/null 2>&1 || kill -TERM "$child" 2>/dev/null || true
}
trap stop TERM INT
status=0
wait "$child" || status=$?
while kill -0 "$child" 2>/dev/null; do  # the wait above was interrupted by the signal
  status=0
  wait "$child" || status=$?
done
echo "entrypoint: TorchServe exited ($status)"
exit "$status"
