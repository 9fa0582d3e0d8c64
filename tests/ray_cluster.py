"""A real Ray cluster of several nodes on this machine, for the batch tests: ``ray start --head --block``
and ``ray start --address HEAD --block`` as child processes on free loopback ports, each node with its own
ports; stopped by pid (the ``ray start`` processes and every process under them), never ``ray stop``."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Set

import psutil

from tsvision.tools.serve.server import free_port

RAY = str(Path(sys.executable).parent / "ray")
# A loopback address, but not 127.0.0.1: Ray replaces "127.0.0.1" and "localhost" (in --address and
# --node-ip-address) by the host's network address for any cluster of more than one node.
LOOPBACK = "127.0.0.2"
REPO = Path(__file__).resolve().parent.parent
WAIT_FOR_NODES = r"""
import sys, time, ray
ray.init(address=sys.argv[1], logging_level=40, log_to_driver=False)
deadline = time.time() + float(sys.argv[3])
while sum(node["Alive"] for node in ray.nodes()) < int(sys.argv[2]):
    if time.time() > deadline:
        sys.exit(f"only {sum(node['Alive'] for node in ray.nodes())} of {sys.argv[2]} nodes joined")
    time.sleep(0.5)
"""


def distinct_free_ports(count: int, taken: Set[int]) -> List[int]:
    """``count`` free ports, none in ``taken`` (which grows by them): the OS may hand one port out twice."""
    ports: List[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in taken:
            taken.add(port)
            ports.append(port)
    return ports


def node_ports(taken: Set[int], workers: int = 48) -> List[str]:
    """Every port a node listens on, picked free (two nodes on one host must not share any).

    Each driver and each worker process holds one port of ``--worker-port-list`` until Raylet reaps it, and
    the workers of a driver killed by SIGKILL live on for a while: a short list ends a later job with
    "No available ports", so each node gets ``workers`` of them (the batch tests run up to 8 jobs)."""
    (manager, objects, agent, agent_grpc, metrics, runtime_env), ports = (distinct_free_ports(6, taken),
                                                                          distinct_free_ports(workers, taken))
    return [f"--node-manager-port={manager}", f"--object-manager-port={objects}",
            f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
            "--worker-port-list=" + ",".join(map(str, ports))]


class RayCluster:
    """``nodes`` Ray nodes with ``cpus`` logical CPUs each; ``address`` for ``--address``."""

    def __init__(self, nodes: int = 2, cpus: int = 3) -> None:
        self.nodes, self.cpus = nodes, cpus
        self.processes: List[subprocess.Popen] = []
        self.temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths have a limit
        self.address: Optional[str] = None
        # Token authentication is on by default in Ray 2.60: one token for every node and driver of this cluster.
        self.env: Dict[str, str] = dict(os.environ, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0",
                                        RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))

    def start(self, timeout: float = 180) -> "RayCluster":
        taken: Set[int] = set()
        port, client_port = distinct_free_ports(2, taken)
        self.address = f"{LOOPBACK}:{port}"
        common = ["--block", f"--num-cpus={self.cpus}", "--num-gpus=0", "--object-store-memory=200000000",
                  "--disable-usage-stats"]
        self._spawn([RAY, "start", "--head", f"--node-ip-address={LOOPBACK}", f"--port={port}",
                     "--include-dashboard=false", f"--ray-client-server-port={client_port}", f"--temp-dir={self.temp}",
                     *common, *node_ports(taken)])
        for _ in range(self.nodes - 1):
            self._spawn([RAY, "start", f"--address={self.address}", f"--node-ip-address={LOOPBACK}", *common,
                         *node_ports(taken)])
        self._wait_for_nodes(timeout)
        return self

    def _wait_for_nodes(self, timeout: float) -> None:
        """Until every node has joined; fails at once when a ``ray start --block`` exits (a node died)."""
        waiter = subprocess.Popen([sys.executable, "-c", WAIT_FOR_NODES, self.address, str(self.nodes), str(timeout)],
                                  env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout + 60
        while waiter.poll() is None:
            exited = [n for n, process in enumerate(self.processes) if process.poll() is not None]
            if exited or time.monotonic() > deadline:
                waiter.kill()
                waiter.wait()
                reason = f"node(s) {exited} exited" if exited else "the wait timed out"
                raise RuntimeError(f"the Ray cluster did not start: {reason}\n{self.log_tail()}")
            time.sleep(0.5)
        if waiter.returncode != 0:
            raise RuntimeError(f"the Ray cluster did not start: {waiter.stderr.read()[-2000:]}\n{self.log_tail()}")

    def _spawn(self, command: List[str], **env: str) -> None:
        log = open(self.temp / f"node{len(self.processes)}.log", "w")
        self.processes.append(subprocess.Popen(command, env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True))
        log.close()

    def stop(self) -> None:
        """SIGTERM to each ``ray start --block`` (it stops its node), then SIGKILL whatever of its tree is left
        after ten seconds."""
        trees = []
        for process in reversed(self.processes):
            try:
                trees.append(psutil.Process(process.pid).children(recursive=True))
            except psutil.NoSuchProcess:
                trees.append([])
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        # Ten seconds for the nodes together: after a driver was killed by SIGKILL, the head's ``ray start``
        # may not exit on SIGTERM at all (it waited out 30 s), and the trees are killed below anyway.
        deadline = time.monotonic() + 10
        for process in reversed(self.processes):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        # Ten seconds for all of them together (one by one, a few workers of a killed job took 30 s).
        _, alive = psutil.wait_procs([child for tree in trees for child in tree], timeout=10)
        for child in alive:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=10)
        shutil.rmtree(self.temp, ignore_errors=True)

    def log_tail(self) -> str:
        return "\n".join((p.read_text()[-1500:]) for p in sorted(self.temp.glob("node*.log")))

    def __enter__(self) -> "RayCluster":
        """Starts the cluster; once more, on fresh ports, when the first try fails (a port picked free can be
        taken by another test before the node binds it)."""
        for attempt in (1, 2):
            try:
                return self.start()
            except Exception as failed:
                self.stop()
                if attempt == 2:
                    raise
                print(f"retrying the Ray cluster: {failed}", file=sys.stderr)
                self.processes = []
                self.temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def __exit__(self, *exc) -> None:
        self.stop()
