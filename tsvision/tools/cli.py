"""``tsvision COMMAND [options]``: one command line for the tooling. ``tsvision COMMAND --help`` for each."""

from __future__ import annotations

import importlib
import sys
from typing import List, Optional

COMMANDS = {
    "export": ("tsvision.tools.export", "export a torchvision model to TorchScript and ONNX (random weights or --checkpoint)"),
    "archive": ("tsvision.tools.archive", "build a .mar from a model file (checked through its handler first)"),
    "extra-files": ("tsvision.tools.extra_files", "print torch-model-archiver's --extra-files: the serving code and labels"),
    "predict": ("tsvision.tools.predict", "send an image to a served model over REST, gRPC or the Open Inference Protocol"),
    "manage": ("tsvision.tools.manage", "versions: list, register, scale, set-default, promote, rollback, retire"),
    "route": ("tsvision.tools.routing", "a routing file -> an A/B router configuration or Kubernetes manifests"),
    "report": ("tsvision.tools.report", "per-variant requests, errors, latency and top labels from the router's log"),
    "gateway": ("tsvision.tools.oip_gateway", "a KServe v2 gRPC gateway so tritonclient's gRPC client reaches TorchServe"),
}


def usage() -> str:
    lines = ["usage: tsvision COMMAND [options]   (tsvision COMMAND --help)", "", "commands:"]
    lines += [f"  {name:<11} {help_text}" for name, (_, help_text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from tsvision import __version__

        print(f"tsvision {__version__}")
        return 0
    if argv[0] not in COMMANDS:
        print(f"tsvision: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
