"""``tsvision COMMAND [options]``: one command line for the tooling. ``tsvision COMMAND --help`` for each."""

from __future__ import annotations

import importlib
import sys
from typing import List, Optional

from tsvision import __version__
from tsvision.tools import command

COMMANDS = {
    "export": ("tsvision.tools.export.cli",
               "export a torchvision model to TorchScript and ONNX (random weights, --weights or --checkpoint)"),
    "archive": ("tsvision.tools.archive.cli", "build a .mar from a model file (checked through its handler first)"),
    "workflow": ("tsvision.tools.archive.workflow_cli",
                 "build a TorchServe workflow archive (.war): detect -> crop -> classify, or your own spec"),
    "extra-files": ("tsvision.tools.archive.extra_files",
                    "print torch-model-archiver's --extra-files: the serving code and labels"),
    "predict": ("tsvision.tools.clients.predict",
                "send an image to a served model over REST, gRPC or the Open Inference Protocol"),
    "manage": ("tsvision.tools.serve.manage",
               "versions: list, register, scale, set-default, promote, rollback, retire"),
    "route": ("tsvision.tools.routing.cli", "a routing file -> an A/B router configuration or Kubernetes manifests"),
    "report": ("tsvision.tools.routing.report",
               "per-variant requests, errors, latency and top labels from the router's log"),
    "gateway": ("tsvision.tools.clients.oip_gateway",
                "a KServe v2 gRPC gateway so tritonclient's gRPC client reaches TorchServe"),
    "kserve": ("tsvision.tools.serve.kserve_server",
               "serve a folder of .mar archives with KServe's model server (v1, v2 REST and gRPC)"),
    "batch": ("tsvision.tools.batch.cli", "run an archive over a folder, glob or list of images on Ray Data"),
    "container": ("tsvision.tools.serve.container",
                  "the serving image (Containerfile): make a Debian base, build it, run it with podman"),
}


def usage() -> str:
    lines = ["usage: tsvision [--debug] COMMAND [options]   (tsvision COMMAND --help)", "", "commands:"]
    lines += [f"  {name:<11} {help_text}" for name, (_, help_text) in COMMANDS.items()]
    lines += ["", "An error is one line on stderr; exit status 2: the command line or a file it names is wrong,",
              "1: the work failed. --debug (before or after COMMAND) prints the traceback too."]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = bool(argv) and argv[0] == "--debug"
    if debug:
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"tsvision {__version__}")
        return 0
    if argv[0] not in COMMANDS:
        print(f"tsvision: error: unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)} (see tsvision --help)",
              file=sys.stderr)
        return 2
    name, rest = argv[0], argv[1:]
    previous, command.DEBUG = command.DEBUG, command.DEBUG or debug
    try:  # each main reports its own errors; this also covers one that fails to import
        return command.run(f"tsvision {name}", lambda args: importlib.import_module(COMMANDS[name][0]).main(args), rest)
    finally:
        command.DEBUG = previous


if __name__ == "__main__":
    sys.exit(main())
