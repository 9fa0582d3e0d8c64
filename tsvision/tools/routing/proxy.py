"""Run the A/B router from the routing file: nginx in front, HAProxy splitting; start, change the
weights live (no reload, no connection closed), stop by pid.

    client --keep-alive--> nginx (401, JSON access log, shadow mirror; never reloaded for weights)
           --keep-alive--> HAProxy (bucket map -> /predictions/MODEL/VERSION + X-Model-Version)
           --keep-alive--> TorchServe

A graceful nginx reload closes idle keep-alive connections, and a client that has just written a
request on one gets a reset (nginx 1.22 cannot wait for it). Weights therefore live in HAProxy's
bucket map, which its runtime API replaces atomically while every connection stays open.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import requests

from tsvision.tools.routing.buckets import bucket_table, format_bucket_map, keeps_growing_variants, parse_bucket_map
from tsvision.tools.routing.routing_file import Routing
from tsvision.tools.routing.templates import render_haproxy, render_nginx
from tsvision.tools.serve.processes import stop_tree
from tsvision.tools.serve.server import free_port


def _wait_for_port(port: int, deadline: float) -> bool:
    while time.time() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


def require_binary(binary: str, name: str, package: str) -> None:
    """Raise a clear error when the server's program is not installed."""
    if not Path(binary).exists():
        raise RuntimeError(f"{name} is not installed: apt-get install {package} (scripts/setup.sh does this)")


def check_config(name: str, config: Path, command: List[str]) -> None:
    """Run the server's own configuration check (``command``); raise with its message when it rejects
    ``config`` (its error lines: HAProxy's ``[ALERT]``, nginx's ``[emerg]``; else all it printed)."""
    check = subprocess.run(command, capture_output=True, text=True)
    if check.returncode != 0:
        printed = (check.stderr + check.stdout).strip()
        errors = [line.strip() for line in printed.splitlines() if "[ALERT]" in line or "[emerg]" in line]
        raise RuntimeError(f"{name} rejected {config}: {' '.join(errors) or printed or 'no message'}")


class StoppedOnExit:
    """``with`` support for a process owner: leaving the block calls ``stop()``, even on an error."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class Nginx(StoppedOnExit):
    """One nginx master (and its workers) under ``prefix``: config, pid, logs, temp files.
    ``router`` is the HAProxy address that nginx forwards predictions to."""

    def __init__(self, prefix: Path, listen_port: int, torchserve: str, router: str = "127.0.0.1:8091") -> None:
        self.prefix = Path(prefix).resolve()
        self.port = listen_port
        self.torchserve = torchserve
        self.router = router
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
        self.config.write_text(render_nginx(routing, f"127.0.0.1:{self.port}", self.torchserve, self.prefix, user,
                                            self.router))
        check_config("nginx", self.config, [self.binary, "-t", "-q", "-p", str(self.prefix), "-c", str(self.config)])

    def start(self, routing: Routing, timeout: float = 15) -> "Nginx":
        require_binary(self.binary, "nginx", "nginx-light")
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
        """New configuration, gracefully: old workers finish their requests, new ones take over.

        Only for changes of the model, sticky header or shadow: old workers close idle keep-alive
        connections, so a client writing a request on one at that moment gets a reset. Weights
        never need this (``Router.apply``)."""
        self.write(routing)
        os.kill(self.pid, signal.SIGHUP)

    def stop(self, timeout: float = 15) -> None:
        """Graceful shutdown of the master (SIGQUIT lets workers finish), SIGKILL after ``timeout``."""
        if self.pid is not None:
            stop_tree(self.pid, signal.SIGQUIT, timeout, whole_tree=False)
            self.pid = None


SOCKET_PATH_LIMIT = 97  # HAProxy's longest 'stats socket' path (a unix socket's 107 bytes, less its own margin)


class HAProxy(StoppedOnExit):
    """One HAProxy under ``prefix``: haproxy.cfg, buckets.map (the live split, persisted), the admin
    socket, a log of its own messages. Started in the foreground as our child, stopped by pid."""

    def __init__(self, prefix: Path, listen_port: int, torchserve: str) -> None:
        self.prefix = Path(prefix).resolve()
        self.port = listen_port
        self.torchserve = torchserve
        self.config = self.prefix / "haproxy.cfg"
        self.map_file = self.prefix / "buckets.map"
        self.previous_map_file = self.prefix / "buckets.previous.map"
        self.log = self.prefix / "haproxy.log"
        socket_path = self.prefix / "haproxy.sock"
        if len(str(socket_path)) > SOCKET_PATH_LIMIT:
            socket_path = Path(tempfile.mkdtemp(prefix="tsvision-haproxy-")) / "admin.sock"
        self.socket = socket_path
        self.pid: Optional[int] = None
        self.process: Optional[subprocess.Popen] = None
        self.binary = shutil.which("haproxy") or "/usr/sbin/haproxy"

    @classmethod
    def running(cls, prefix: Path) -> "HAProxy":
        """The HAProxy whose files are in ``prefix`` (its port and socket read from haproxy.cfg)."""
        text = (Path(prefix) / "haproxy.cfg").read_text()
        proxy = cls(prefix, int(re.search(r"^\s*bind \S+:(\d+)", text, re.M)[1]),
                    re.search(r"^\s*server torchserve (\S+)", text, re.M)[1])
        proxy.socket = Path(re.search(r"^\s*stats socket (\S+)", text, re.M)[1])
        return proxy

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _saved_table(self, path: Path) -> Optional[List[str]]:
        return parse_bucket_map(path.read_text()) if path.exists() else None

    def _persist(self, table: List[str], routing: Routing, previous: Optional[List[str]]) -> None:
        """Write the live table (and the one before it, for an exact rollback) atomically."""
        if previous is not None:
            temporary = self.previous_map_file.with_suffix(".tmp")
            temporary.write_text(format_bucket_map(previous, routing))
            os.replace(temporary, self.previous_map_file)
        temporary = self.map_file.with_suffix(".tmp")
        temporary.write_text(format_bucket_map(table, routing))
        os.replace(temporary, self.map_file)

    def write(self, routing: Routing) -> None:
        """haproxy.cfg and buckets.map. An existing map (a previous run's live split) is kept and
        only rebalanced to the routing file's weights, so a restart moves no key."""
        self.prefix.mkdir(parents=True, exist_ok=True)
        current = self._saved_table(self.map_file)
        table = bucket_table(routing, current, self._saved_table(self.previous_map_file))
        self._persist(table, routing, current if current is not None and current != table else None)
        self.config.write_text(render_haproxy(routing, self.address, self.torchserve, self.map_file, self.socket))
        check_config("haproxy", self.config, [self.binary, "-c", "-f", str(self.config)])

    def start(self, routing: Routing, timeout: float = 15) -> "HAProxy":
        require_binary(self.binary, "haproxy", "haproxy")
        self.write(routing)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([self.binary, "-db", "-f", str(self.config)], stdout=log, stderr=log,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.process.pid
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                break
            if _wait_for_port(self.port, time.time() + 0.2) and self.socket.exists():
                return self
        self.stop()
        raise TimeoutError(f"haproxy did not start; see {self.log}")

    # -- the runtime API ---------------------------------------------------------------------
    def command(self, line: str, timeout: float = 10) -> str:
        """One command on the admin socket; its whole answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.socket))
            sock.sendall(line.encode() + (b"" if line.endswith("\n") else b"\n"))
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def table(self) -> List[str]:
        """The live bucket -> version table, read from HAProxy itself."""
        table = parse_bucket_map(self.command(f"show map {self.map_file}"))
        if table is None:
            raise RuntimeError(f"haproxy's map {self.map_file} is not a complete bucket table")
        return table

    def replace_table(self, table: List[str]) -> None:
        """Swap the whole map atomically: a new map version is filled, then committed at once."""
        answer = self.command(f"prepare map {self.map_file}")
        if "New version created:" not in answer:
            raise RuntimeError(f"haproxy: prepare map: {answer.strip()}")
        version = answer.split(":")[1].split()[0]
        payload = "".join(f"{bucket} {name}\n" for bucket, name in enumerate(table))
        answer = self.command(f"add map @{version} {self.map_file} <<\n{payload}\n")
        if answer.strip():
            raise RuntimeError(f"haproxy: add map: {answer.strip()[:300]}")
        answer = self.command(f"commit map @{version} {self.map_file}")
        if answer.strip():
            raise RuntimeError(f"haproxy: commit map: {answer.strip()[:300]}")
        if self.table() != list(table):
            raise RuntimeError("haproxy's map differs from the table just committed")

    def apply(self, routing: Routing) -> Dict[str, object]:
        """New weights, live: only the buckets of shrinking versions move (or, going back to the
        weights before, the table before comes back exactly). Persisted to buckets.map."""
        current = self.table()
        table = bucket_table(routing, current, self._saved_table(self.previous_map_file))
        if not keeps_growing_variants(current, table):  # bucket_table guarantees it; checked anyway
            raise RuntimeError("refusing a table that would move keys of a version that did not shrink")
        if table != current:
            self.replace_table(table)
            self._persist(table, routing, current)
        else:
            self._persist(table, routing, None)
        return {"moved": sum(a != b for a, b in zip(current, table)),
                "buckets": {v: table.count(v) for v in dict.fromkeys(table)}}

    def route(self, key: Optional[str], header: str = "X-User-Id", session: Optional[requests.Session] = None) -> str:
        """The version a request with this key goes to now, asked of HAProxy (no inference)."""
        response = (session or requests).get(f"{self.url}/_ab/route", headers={header: key} if key is not None else {},
                                             timeout=10)
        response.raise_for_status()
        return response.text

    def route_many(self, keys: List[str], header: str = "X-User-Id", batch: int = 500) -> List[str]:
        """``route`` for many keys at once: HTTP/1.1 pipelining on one connection, still answered
        by HAProxy's own rules (thousands of keys per second, no inference)."""
        versions: List[str] = []
        for start in range(0, len(keys), batch):
            chunk = keys[start:start + batch]
            request = "".join(f"GET /_ab/route HTTP/1.1\r\nHost: router\r\n{header}: {key}\r\n\r\n" for key in chunk)
            with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
                sock.sendall(request.encode())
                buffer = b""
                answers: List[str] = []
                while len(answers) < len(chunk):
                    end = buffer.find(b"\r\n\r\n")
                    if end >= 0:
                        head = buffer[:end].decode("latin-1").split("\r\n")
                        fields = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in head[1:])}
                        length = int(fields["content-length"])
                        if len(buffer) >= end + 4 + length:
                            if not head[0].split()[1] == "200":
                                raise RuntimeError(f"haproxy answered /_ab/route with {head[0]}")
                            answers.append(buffer[end + 4:end + 4 + length].decode())
                            buffer = buffer[end + 4 + length:]
                            continue
                    data = sock.recv(1 << 16)
                    if not data:
                        raise RuntimeError("haproxy closed the connection during /_ab/route")
                    buffer += data
            versions.extend(answers)
        return versions

    def stop(self, timeout: float = 10) -> None:
        """Soft stop (SIGUSR1: finish what is in flight), SIGKILL after ``timeout``."""
        if self.pid is not None:
            stop_tree(self.pid, signal.SIGUSR1, timeout, whole_tree=False)
            if self.process is not None:
                self.process.wait(timeout=5)
            self.pid = None
            self.process = None


class Router(StoppedOnExit):
    """The whole A/B router: HAProxy (the split) behind nginx (401, log, shadow), both under
    ``prefix``. ``apply`` changes weights and versions live; nothing is reloaded."""

    def __init__(self, prefix: Path, listen_port: int, torchserve: str, router_port: Optional[int] = None) -> None:
        self.prefix = Path(prefix).resolve()
        self.haproxy = HAProxy(self.prefix / "haproxy", router_port or free_port(), torchserve)
        self.nginx = Nginx(self.prefix / "nginx", listen_port, torchserve, self.haproxy.address)
        self.routing: Optional[Routing] = None

    @property
    def url(self) -> str:
        return self.nginx.url

    @property
    def access_log(self) -> Path:
        return self.nginx.access_log

    @property
    def torchserve(self) -> str:
        return self.nginx.torchserve

    @torchserve.setter
    def torchserve(self, address: str) -> None:
        self.nginx.torchserve = self.haproxy.torchserve = address

    def start(self, routing: Routing) -> "Router":
        try:
            self.haproxy.start(routing)
            self.nginx.start(routing)
        except BaseException:
            self.stop()
            raise
        self.routing = routing
        return self

    def apply(self, routing: Routing) -> Dict[str, object]:
        """New weights (or versions) without a reload. The model, sticky header and shadow are in
        the configuration files: changing them needs ``stop`` and ``start`` (not hitless)."""
        if self.routing is not None:
            fixed = ("model", "sticky_header", "shadow")
            changed = [name for name in fixed if getattr(routing, name) != getattr(self.routing, name)]
            if changed:
                raise ValueError(f"{', '.join(changed)} changed: restart the router (only weights and versions change "
                                 f"live)")
        result = self.haproxy.apply(routing)
        self.routing = routing
        return result

    def route(self, key: Optional[str], session: Optional[requests.Session] = None) -> str:
        header = (self.routing.sticky_header if self.routing else None) or "X-User-Id"
        return self.haproxy.route(key, header, session)

    def route_many(self, keys: List[str]) -> List[str]:
        header = (self.routing.sticky_header if self.routing else None) or "X-User-Id"
        return self.haproxy.route_many(keys, header)

    def stop(self) -> None:
        """nginx first (graceful), then HAProxy; each by its pid."""
        try:
            self.nginx.stop()
        finally:
            self.haproxy.stop()
