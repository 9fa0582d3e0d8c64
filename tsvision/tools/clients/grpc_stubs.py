"""Python gRPC stubs generated from the ``.proto`` files inside the installed TorchServe jar.

The stubs always match the TorchServe that is installed: they are generated on first use (or by
``python -m tsvision.tools.clients.grpc_stubs``, which ``scripts/setup.sh`` runs) into a folder keyed by the
jar's hash, and imported from there.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import ts

PROTOS = ("inference.proto", "management.proto", "open_inference_grpc.proto")


def jar_path() -> Path:
    return Path(ts.__file__).resolve().parent / "frontend" / "model-server.jar"


def stubs_dir() -> Path:
    jar = jar_path()
    digest = hashlib.sha256(jar.read_bytes()).hexdigest()[:12]
    base = Path(os.environ.get("TSVISION_CACHE", Path.home() / ".cache" / "tsvision"))
    return base / f"grpc-stubs-{digest}"


def generate(target: Path) -> Path:
    """Extract the protos (and the google/ protos they import) from the jar and run protoc."""
    from grpc_tools import protoc  # heavy: only when the stubs are generated (once per TorchServe jar)

    protos = target / "protos"
    protos.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(jar_path()) as jar:
        for name in jar.namelist():
            if name in PROTOS or (name.startswith("google/") and name.endswith(".proto")):
                jar.extract(name, protos)
    include = Path(protoc.__file__).resolve().parent / "_proto"  # google/protobuf/*.proto
    for proto in PROTOS:
        code = protoc.main(["protoc", f"-I{protos}", f"-I{include}", f"--python_out={target}",
                            f"--grpc_python_out={target}", str(protos / proto)])
        if code != 0:
            raise RuntimeError(f"protoc failed on {proto} (exit {code})")
    (target / "READY").write_text("generated from " + str(jar_path()) + "\n")
    return target


def load() -> SimpleNamespace:
    """The generated modules: inference_pb2(_grpc), management_pb2(_grpc), open_inference_grpc_pb2(_grpc)."""
    target = stubs_dir()
    if not (target / "READY").exists():
        generate(target)
    if str(target) not in sys.path:
        sys.path.insert(0, str(target))
    names = [p.removesuffix(".proto") + suffix for p in PROTOS for suffix in ("_pb2", "_pb2_grpc")]
    return SimpleNamespace(**{name: importlib.import_module(name) for name in names})


if __name__ == "__main__":
    print(f"gRPC stubs in {generate(stubs_dir())}")
