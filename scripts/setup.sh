#!/usr/bin/env bash
# Install everything tsvision needs into .venv (idempotent; the README says how long the first time takes).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! java -version 2>&1 | grep -q 'version "17'; then
  echo "setup: installing Java 17 (TorchServe's frontend needs it)"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq openjdk-17-jre-headless >/dev/null
fi

if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  echo "setup: installing nginx (the A/B router)"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq nginx-light >/dev/null
fi

if ! command -v haproxy >/dev/null && [ ! -x /usr/sbin/haproxy ]; then
  echo "setup: installing haproxy (the A/B split, changed live without reloads)"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq haproxy >/dev/null
fi

if ! command -v wrk >/dev/null; then
  echo "setup: installing wrk (the benchmark's load generator)"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq wrk >/dev/null
fi

missing_container_tools=""
for tool in podman runc debootstrap; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || missing_container_tools="$missing_container_tools $tool"
done
if [ -n "$missing_container_tools" ]; then
  echo "setup: installing podman, runc and debootstrap (the serving image and its test: docs/deployment.md)"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq podman runc debootstrap >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.tsvision-installed
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[test,examples,bench,batch]"
  touch "$stamp"
fi
# KServe's model server (tsvision kserve) in .venv-kserve, layered on .venv: it sees every package of
# .venv, and its own kserve pins (protobuf<7, psutil<6) shadow .venv's newer ones only there.
if [ ! -x .venv-kserve/bin/python ]; then
  "$PYTHON" -m venv .venv-kserve
fi
main_site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
kserve_site=$(.venv-kserve/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "import site; site.addsitedir('$main_site')" > "$kserve_site/tsvision-main-venv.pth"
kserve_stamp=.venv-kserve/.tsvision-installed
if [ ! -f "$kserve_stamp" ] || [ setup.cfg -nt "$kserve_stamp" ]; then
  kserve_pin=$(.venv/bin/python -c 'import configparser; c = configparser.ConfigParser(); c.read("setup.cfg"); print(c["options.extras_require"]["kserve"].strip())')
  .venv-kserve/bin/python -m pip install -q "$kserve_pin"
  touch "$kserve_stamp"
fi
.venv/bin/python -m tsvision.tools.clients.grpc_stubs >/dev/null  # gRPC stubs from the installed TorchServe's .proto files
.venv/bin/python -c "import torch, torchvision, onnxruntime, ts; print(f'setup: torch {torch.__version__}, torchvision {torchvision.__version__}, onnxruntime {onnxruntime.__version__}, torchserve ready')"
