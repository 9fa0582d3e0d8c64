"""Serve every .mar in a folder with KServe's model server (the ``kserve`` package), no Kubernetes.

    tsvision kserve --model-store model_store [--http-port 8080] [--grpc-port 8081] [--host 127.0.0.1]
    python -m tsvision kserve --model-store model_store                                   # the same

Each archive is unpacked once and answered by its own handler through TorchServe's ``Context``
(``LocalWorker``), so the answers are exactly the archive's: KServe v1
(``POST /v1/models/NAME:predict`` with ``{"instances": [base64 images]}``) and v2, the Open
Inference Protocol, over REST (``/v2/models/NAME/infer``) and gRPC (``inference.GRPCInferenceService``),
``BYTES`` image inputs, output ``answers``. Liveness and readiness are KServe's (``/``,
``/v2/health/live``, ``/v2/health/ready``, ``/v1/models/NAME``, ``/v2/models/NAME/ready``, gRPC
``ServerLive``/``ServerReady``/``ModelReady``). Requests that arrive together are answered in one
handler call, up to the archive's batchSize, waiting at most its maxBatchDelay (``--batch-size``,
``--max-batch-delay`` override them). There is no token: keep it on 127.0.0.1, or behind what your
platform puts in front (an archive runs arbitrary Python). Needs the ``kserve`` package
(``pip install "tsvision[kserve]"``, or ``.venv-kserve`` from ``scripts/setup.sh``). See docs/kserve.md.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import requests

from tsvision.tools.archive.unpacked import ArchiveError, UnpackedArchive, unpack
from tsvision.tools.command import CommandError, UsageError, entry_point
from tsvision.tools.command import parser as command_parser
from tsvision.tools.serve.manage import ManagementError, verify_archive
from tsvision.tools.serve.processes import stop_tree

REPO = Path(__file__).resolve().parents[3]
DEFAULT_MESSAGE_LIMIT = 25 * 1024 * 1024  # as TorchServe's max_request_size in config.properties


def unpack_store(model_store: Path, workdir: Path, names: Optional[Sequence[str]] = None,
                 allow_unrecorded: bool = False) -> List[UnpackedArchive]:
    """Every ``.mar`` of ``model_store`` (or those named), its SHA-256 checked, unpacked under ``workdir``."""
    archives = sorted(model_store.glob("*.mar"))
    if names:
        by_name = {path.stem: path for path in archives}
        unknown = [name for name in names if name not in by_name]
        if unknown:
            raise UsageError(f"--models: no {', '.join(f'{n}.mar' for n in unknown)} in {model_store}")
        archives = [by_name[name] for name in names]
    if not archives:
        raise UsageError(f"--model-store {model_store}: no .mar files there")
    unpacked = []
    for path in archives:
        if not (allow_unrecorded and not path.with_suffix(".mar.sha256").exists()):
            verify_archive(path)
        unpacked.append(unpack(path, workdir / path.stem))
    return unpacked


def kserve_python() -> str:
    """A Python that can import ``kserve``: ``$TSVISION_KSERVE_PYTHON``, this one, or ``.venv-kserve``'s."""
    if os.environ.get("TSVISION_KSERVE_PYTHON"):
        return os.environ["TSVISION_KSERVE_PYTHON"]
    if importlib.util.find_spec("kserve") is not None:
        return sys.executable
    candidate = REPO / ".venv-kserve" / "bin" / "python"
    if candidate.exists():
        return str(candidate)
    raise RuntimeError("no Python with the kserve package: run scripts/setup.sh (it makes .venv-kserve), "
                       "pip install 'tsvision[kserve]', or set TSVISION_KSERVE_PYTHON")


class KServeServer:
    """``tsvision kserve`` as a process of its own: started, waited for until ready, stopped by pid."""

    def __init__(self, model_store: Path, workdir: Path, http_port: int, grpc_port: int,
                 models: Optional[Sequence[str]] = None, extra_args: Sequence[str] = (),
                 python: Optional[str] = None) -> None:
        self.model_store, self.workdir = Path(model_store), Path(workdir)
        self.http_port, self.grpc_port = http_port, grpc_port
        self.models, self.extra_args = list(models or []), list(extra_args)
        self.python = python or kserve_python()
        self.pid: Optional[int] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def log(self) -> Path:
        return self.workdir / "kserve.log"

    def start(self, timeout: float = 180) -> "KServeServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        command = [self.python, "-m", "tsvision", "kserve", "--model-store", str(self.model_store),
                   "--workdir", str(self.workdir / "models"), "--http-port", str(self.http_port),
                   "--grpc-port", str(self.grpc_port), *self.extra_args]
        if self.models:
            command += ["--models", *self.models]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        with open(self.log, "ab") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True)
        self.pid = process.pid
        self._process = process
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float) -> None:
        """Until ``/v2/health/ready`` says ready and the gRPC port accepts connections."""
        deadline, last = time.time() + timeout, "no answer yet"
        while time.time() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"tsvision kserve exited with status {self._process.returncode}: "
                                   f"{self._last_line()} (log: {self.log})")
            try:
                ready = requests.get(f"{self.url}/v2/health/ready", timeout=5)
                if ready.status_code == 200 and ready.json().get("ready"):
                    with socket.create_connection(("127.0.0.1", self.grpc_port), timeout=5):
                        return
                last = f"ready: {ready.status_code} {ready.text[:100]}"
            except (requests.RequestException, OSError, ValueError) as error:
                last = str(error)
            time.sleep(0.3)
        raise TimeoutError(f"tsvision kserve not ready after {timeout:.0f} s ({last}); log: {self.log}")

    def _last_line(self) -> str:
        lines = self.log.read_text(errors="replace").strip().splitlines() if self.log.exists() else []
        return lines[-1] if lines else "no output"

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM to the server's process tree, SIGKILL after ``timeout``."""
        if self.pid is not None:
            stop_tree(self.pid, signal.SIGTERM, timeout)
            self._process.wait(timeout=10)
            self.pid = None

    def __enter__(self) -> "KServeServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@entry_point("tsvision kserve")
def main(argv: Optional[List[str]] = None) -> int:
    parser = command_parser("tsvision kserve", __doc__)
    parser.add_argument("--model-store", type=Path, required=True, help="folder of .mar archives to serve")
    parser.add_argument("--models", nargs="+", metavar="NAME", help="serve only these archives (NAME.mar)")
    parser.add_argument("--host", default="127.0.0.1", help="address both listeners bind to (0.0.0.0 in a container)")
    parser.add_argument("--http-port", type=int, default=8080, help="REST port (v1 and v2)")
    parser.add_argument("--grpc-port", type=int, default=8081, help="gRPC port (v2)")
    parser.add_argument("--batch-size", type=int, help="largest batch per handler call (default: the archive's)")
    parser.add_argument("--max-batch-delay", type=float, metavar="MS",
                        help="how long a request waits for others to share its batch (default: the archive's)")
    parser.add_argument("--message-limit", type=int, default=DEFAULT_MESSAGE_LIMIT,
                        help="largest gRPC message in bytes, both ways")
    parser.add_argument("--workdir", type=Path,
                        help="where archives are unpacked (default: a temporary folder, removed at exit)")
    parser.add_argument("--allow-unrecorded", action="store_true",
                        help="serve archives that have no NAME.mar.sha256 beside them (a mismatch is still refused)")
    args = parser.parse_args(argv)
    if not args.model_store.is_dir():
        raise UsageError(f"--model-store {args.model_store}: no such folder")
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    for port in (args.http_port, args.grpc_port):
        try:
            with socket.create_server((args.host, port)):
                pass
        except OSError as error:
            raise CommandError(f"cannot listen on {args.host}:{port} ({error.strerror or error})") from error
    # kserve reads sys.argv when it is imported (model_server's module-level parser): give it none of ours.
    sys.argv = sys.argv[:1]
    # kserve 0.21 answers with FastAPI's ORJSONResponse, which warns on every request: one log line per answer.
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")
    try:  # optional dependency: only this command needs it
        from tsvision.tools.serve import kserve_model
    except ImportError as error:
        raise CommandError(f"the kserve package is missing ({error}); pip install 'tsvision[kserve]'") from error
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tsvision-kserve-"))
    try:
        try:
            archives = unpack_store(args.model_store, workdir, args.models, args.allow_unrecorded)
        except (ArchiveError, ManagementError) as error:
            raise UsageError(str(error)) from error
        models = [kserve_model.ArchiveModel(archive, args.batch_size, args.max_batch_delay) for archive in archives]
        for model in models:
            model.load()
        names: Dict[str, str] = {m.name: m.archive.version for m in models}
        print(f"KServe on {args.host}: REST {args.http_port}, gRPC {args.grpc_port}; models "
              + ", ".join(f"{name} {version}" for name, version in names.items()), flush=True)
        server = kserve_model.LoopbackModelServer(args.host, args.http_port, args.grpc_port, args.message_limit)
        server.start(models)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0
