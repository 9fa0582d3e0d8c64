"""Start, wait for and stop a real TorchServe (used by the demo, the examples and the tests).

Each instance runs in its own working directory with its own TMPDIR, so its pid file, key
file, logs and worker sockets never collide with another TorchServe on the same machine.
Stopping is by process id, the frontend and its workers, never by process name.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Union

import psutil
import requests

from tsvision.tools.serve.keys import read_key
from tsvision.tools.serve.manage import Management
from tsvision.tools.serve.processes import stop_tree

REPO_CONFIG = Path(__file__).resolve().parents[3] / "config.properties"
# The development profile: the shipped (serving) configuration plus model registration through
# the management API. Never expose a server running it.
DEVELOPMENT_PROFILE = {"enable_model_api": "true"}
# What a client needs from a restored snapshot to reach the server (Java escapes ':' in it).
RESTORED_KEYS = ("inference_address", "management_address", "metrics_address", "grpc_inference_port",
                 "grpc_management_port", "certificate_file")
PORT_KEYS = ("inference", "management", "metrics", "grpc_inference", "grpc_management", "initial_worker")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_properties(path: Path) -> Dict[str, str]:
    values = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


class TorchServe:
    """One TorchServe process tree. ``ports=None`` keeps the config's ports; ``"free"`` picks free ones."""

    def __init__(self, model_store: Path, workdir: Path, models: Union[str, Sequence[str]] = "all",
                 base_config: Path = REPO_CONFIG,
                 free_ports: bool = True, overrides: Optional[Dict[str, str]] = None) -> None:
        self.model_store = Path(model_store).resolve()
        self.workdir = Path(workdir).resolve()
        self.models = models
        self.properties = read_properties(base_config)
        self.properties["model_store"] = str(self.model_store)
        if free_ports:
            for key in ("inference", "management", "metrics"):
                self.properties[f"{key}_address"] = f"http://127.0.0.1:{free_port()}"
            self.properties["grpc_inference_port"] = str(free_port())
            self.properties["grpc_management_port"] = str(free_port())
            self.properties["initial_worker_port"] = str(free_port())
        self.properties.update(overrides or {})
        if self.properties.get("enable_model_api", "false").lower() != "true":
            # TorchServe 0.12's POST /workflows is not gated by enable_model_api: without the model API,
            # an empty workflow store leaves it nothing to register (docs/security.md)
            self.properties.setdefault("workflow_store", str(self.workdir / "no_workflows"))
        self.pid: Optional[int] = None
        self._session = requests.Session()

    @property
    def verify(self) -> Union[str, bool]:
        """What to verify the server's TLS certificate with: its own certificate file, if it has one.

        Pass it with every request (``verify=server.verify``): a Session's ``verify`` attribute is
        silently replaced by ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` when either is set
        (psf/requests#3829), and the handshake then fails with "self-signed certificate"."""
        return self.properties.get("certificate_file") or True

    # -- addresses and credentials -------------------------------------------------------
    @property
    def inference_url(self) -> str:
        return self.properties["inference_address"]

    @property
    def management_url(self) -> str:
        return self.properties["management_address"]

    @property
    def metrics_url(self) -> str:
        return self.properties["metrics_address"]

    def key(self, api: str = "inference") -> Optional[str]:
        """The token for ``api`` ("inference" or "management") from key_file.json, if auth is on."""
        return read_key(self.workdir / "key_file.json", api)

    def headers(self, api: str = "inference") -> Dict[str, str]:
        key = self.key(api)
        return {"Authorization": f"Bearer {key}"} if key else {}

    # -- life cycle ------------------------------------------------------------------------
    def start(self, timeout: float = 300, snapshot: bool = False) -> "TorchServe":
        """Start and wait until every model is READY.

        ``snapshot=False`` (the default) starts from the configuration alone (``--ncs``: no
        snapshots written or read). ``snapshot=True`` lets TorchServe write its snapshots to
        ``logs/config/`` (after start-up, after each management change, at shutdown) and, when
        that folder already holds one, restores the latest: models, versions, defaults and worker
        counts come from it. TorchServe reads a snapshot only when started without
        ``--ts-config``, so a restore passes neither the configuration file nor ``models``."""
        for sub in ("tmp", "logs"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        if "workflow_store" in self.properties:
            Path(self.properties["workflow_store"]).mkdir(parents=True, exist_ok=True)
        command = [_torchserve(), "--start", "--model-store", str(self.model_store)]
        if not snapshot:
            command.append("--ncs")
        if snapshot and self.snapshots():
            restored = read_properties(self.snapshots()[-1])  # where the restored server will listen
            self.properties.update({key: _unescape(restored[key]) for key in RESTORED_KEYS if key in restored})
        else:
            config = self.workdir / "config.properties"
            config.write_text("".join(f"{k}={v}\n" for k, v in self.properties.items()))
            command += ["--ts-config", str(config)]
            if self.models:
                command += ["--models", *([self.models] if isinstance(self.models, str) else self.models)]
        # The frontend inherits this stdout: configuration errors (a bad key file, say) appear only there.
        with open(self.console_log, "ab") as console:
            subprocess.run(command, cwd=self.workdir, env=self._env(), check=True, stdout=console)
        pid_file = self.workdir / "tmp" / ".model_server.pid"
        deadline = time.time() + 30
        while not pid_file.exists() and time.time() < deadline:
            time.sleep(0.1)
        if not pid_file.exists():
            raise RuntimeError(f"TorchServe wrote no pid file within 30 s; see {self.workdir / 'logs'}")
        self.pid = int(pid_file.read_text().strip())
        try:
            self.wait_ready(timeout=timeout)
        except BaseException:
            self.stop()  # a half-started server must not outlive the caller
            raise
        return self

    @property
    def console_log(self) -> Path:
        """The frontend's console output (its log lines, and errors it writes nowhere else)."""
        return self.workdir / "logs" / "console.log"

    def _env(self) -> Dict[str, str]:
        env = dict(os.environ, TMPDIR=str(self.workdir / "tmp"), LOG_LOCATION=str(self.workdir / "logs"),
                   METRICS_LOCATION=str(self.workdir / "logs"))
        env.pop("TS_CONFIG_FILE", None)  # it would take precedence over both the file and the snapshot
        return env

    def snapshots(self) -> List[Path]:
        """TorchServe's configuration snapshots in this working directory, oldest first."""
        return sorted((self.workdir / "logs" / "config").glob("*.cfg"))

    def wait_ready(self, names: Optional[Iterable[str]] = None, timeout: float = 300) -> None:
        """Wait until every model (or ``names``) has all its workers READY."""
        deadline = time.time() + timeout
        last = "no answer yet"
        while time.time() < deadline:
            if self.pid is not None and not _alive(self.pid):
                raise RuntimeError(f"TorchServe exited{_reason(self.console_log)}; see {self.workdir / 'logs'}")
            try:
                wanted = list(names) if names is not None else [m["modelName"] for m in self.list_models()]
                if wanted and all(self._ready(name) for name in wanted):
                    return
                last = f"models {wanted} not all READY"
            except (requests.RequestException, KeyError, ValueError) as error:
                last = str(error)
            time.sleep(0.5)
        raise TimeoutError(f"TorchServe not ready after {timeout:.0f} s ({last}); logs in {self.workdir / 'logs'}")

    def list_models(self) -> list:
        return Management(self.management_url, self.workdir / "key_file.json", timeout=10, verify=self.verify).listing()

    def describe(self, name: str, version: str = "all") -> list:
        response = self._session.get(f"{self.management_url}/models/{name}/{version}",
                                     headers=self.headers("management"),
                                     timeout=10, verify=self.verify)
        response.raise_for_status()
        return response.json()

    def _ready(self, name: str) -> bool:
        versions = self.describe(name)
        return all(v["workers"] and all(w["status"] == "READY" for w in v["workers"]) for v in versions)

    def predict(self, name: str, body: bytes, version: Optional[str] = None,
                content_type: str = "application/octet-stream",
                timeout: float = 60) -> requests.Response:
        url = f"{self.inference_url}/predictions/{name}" + (f"/{version}" if version else "")
        headers = {"Content-Type": content_type, **self.headers("inference")}
        return self._session.post(url, data=body, headers=headers, timeout=timeout, verify=self.verify)

    def worker_pids(self, name: str) -> list:
        return sorted(w["pid"] for v in self.describe(name) for w in v["workers"])

    def stop(self, timeout: float = 30) -> None:
        """Stop the frontend and its workers by pid: SIGTERM, then SIGKILL after ``timeout``."""
        if self.pid is not None:
            stop_tree(self.pid, signal.SIGTERM, timeout)
            self.pid = None

    def stop_with_cli(self, timeout: float = 60) -> None:
        """Stop as a user does: ``torchserve --stop`` sends SIGTERM to the frontend, which saves its
        shutdown snapshot and stops its workers. Waits up to ``timeout`` for the whole tree to exit,
        then kills whatever is left by pid."""
        if self.pid is None:
            return
        try:
            tree = [psutil.Process(self.pid)] + psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            tree = []
        try:
            subprocess.run([_torchserve(), "--stop"], cwd=self.workdir, env=self._env(), check=True,
                           stdout=subprocess.DEVNULL, timeout=60)
            psutil.wait_procs(tree, timeout=timeout)
        finally:
            self.stop()  # by pid, if the frontend is still there
            for process in tree:  # workers left behind by a frontend that exited without them
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()

    def __enter__(self) -> "TorchServe":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _torchserve() -> str:
    return shutil.which("torchserve", path=str(Path(sys.executable).parent)) or "torchserve"


def _reason(console_log: Path) -> str:
    """The frontend's own explanation of why it stopped, if its console has one."""
    lines = console_log.read_text(errors="replace").splitlines() if console_log.exists() else []
    found = [line for line in lines
             if line.startswith("Invalid configuration") or "Exception in thread \"main\"" in line]
    return f" ({found[-1].strip()})" if found else ""


def _unescape(value: str) -> str:
    """A value as java.util.Properties wrote it (``http\\://127.0.0.1\\:8080``) back to plain text."""
    return re.sub(r"\\(.)", lambda match: {"n": "\n", "t": "\t", "r": "\r", "f": "\f"}.get(match.group(1),
                                                                                           match.group(1)), value)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
