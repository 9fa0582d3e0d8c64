"""Run nginx from a generated configuration: start, reload without dropping requests, stop by pid."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

from tsvision.tools.processes import stop_tree
from tsvision.tools.routing import Routing, render_nginx


class Nginx:
    """One nginx master (and its workers) under ``prefix``: config, pid, logs, temp files."""

    def __init__(self, prefix: Path, listen_port: int, torchserve: str) -> None:
        self.prefix = Path(prefix).resolve()
        self.port = listen_port
        self.torchserve = torchserve
        self.config = self.prefix / "nginx.conf"
        self.access_log = self.prefix / "access.log"
        self.pid: Optional[int] = None
        self.binary = shutil.which("nginx") or "/usr/sbin/nginx"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write(self, routing: Routing) -> None:
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.prefix / "tmp" / kind).mkdir(parents=True, exist_ok=True)
        # As root, nginx would run its workers as "nobody", who cannot write our temp folders.
        user = "root" if os.geteuid() == 0 else None
        self.config.write_text(render_nginx(routing, f"127.0.0.1:{self.port}", self.torchserve, self.prefix, user))
        check = subprocess.run([self.binary, "-t", "-q", "-p", str(self.prefix), "-c", str(self.config)],
                               capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx rejected {self.config}: {check.stderr.strip()}")

    def start(self, routing: Routing, timeout: float = 15) -> "Nginx":
        if not Path(self.binary).exists():
            raise RuntimeError("nginx is not installed: apt-get install nginx-light (scripts/setup.sh does this)")
        self.write(routing)
        subprocess.run([self.binary, "-p", str(self.prefix), "-c", str(self.config)], check=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            pid_file = self.prefix / "nginx.pid"
            if pid_file.exists() and pid_file.read_text().strip():
                self.pid = int(pid_file.read_text())
                with socket.socket() as sock:
                    if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                        return self
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"nginx did not start; see {self.prefix / 'error.log'}")

    def reload(self, routing: Routing) -> None:
        """New configuration, gracefully: old workers finish their requests, new ones take over."""
        self.write(routing)
        os.kill(self.pid, signal.SIGHUP)

    def stop(self, timeout: float = 15) -> None:
        """Graceful shutdown of the master (SIGQUIT lets workers finish), SIGKILL after ``timeout``."""
        if self.pid is not None:
            stop_tree(self.pid, signal.SIGQUIT, timeout, whole_tree=False)
            self.pid = None

    def __enter__(self) -> "Nginx":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
