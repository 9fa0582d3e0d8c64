#!/usr/bin/env bash
# The two entry points (see README.md):
#   bash run.sh demo   set up, build the six archives, start TorchServe, send a photo to each model
#   bash run.sh test   set up, lint (ruff) and run the whole test suite (tests/unit, tests/e2e, tests/slow)
#   bash run.sh unit   set up and run the fast loop (every test not marked e2e or slow: tests/unit and the
#                      local transport's variants of tests/e2e; in-process, no TorchServe, a few minutes)
#   bash run.sh ab     set up, build, and run an A/B split (three versions behind the nginx + HAProxy router)
#   bash run.sh bench  set up and run the benchmark suite (how long: docs/performance.md; rewrites it)
set -euo pipefail
cd "$(dirname "$0")"
command=${1:-demo}
shift || true
bash scripts/setup.sh
case "$command" in
  demo)
    ./archive.sh
    .venv/bin/python -m examples.demo "$@"
    ;;
  ab)
    [ -f build/classification/model.onnx ] || ./archive.sh
    .venv/bin/python -m examples.ab_demo "$@"
    ;;
  test)
    .venv/bin/ruff check .  # the linter first (pyproject.toml [tool.ruff]; docs/testing.md, "Lint")
    # two workers (pytest-xdist): the server tests on one, the in-process tests beside them (docs/testing.md)
    .venv/bin/python -m pytest -ra -n 2 "$@"
    ;;
  unit)
    .venv/bin/python -m pytest -ra -m "not e2e and not slow" "$@"
    ;;
  bench)
    .venv/bin/python -m benchmarks.suite --update-docs "$@"
    ;;
  *)
    echo "usage: bash run.sh demo|test|unit|ab|bench [args]" >&2
    exit 2
    ;;
esac
