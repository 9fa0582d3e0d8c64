"""``tsvision container``: the serving image (``Containerfile``) built and run with podman.

``base`` makes a Debian bookworm base image here (debootstrap from this machine's Debian mirror, no
registry needed); ``build`` builds the image from this checkout, with torch and the other wheels from
this machine's local wheel folders when they exist; ``run`` starts a container on the host's network,
waits until its health check passes and leaves it running (``podman stop NAME`` stops it cleanly).

podman runs as found to work on these machines: the vfs storage driver, chroot isolation for builds and
Debian's runc for containers (crun fails here on rlimits and cgroups). docs/deployment.md has the rest.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from tsvision.tools.command import CommandError, UsageError, entry_point
from tsvision.tools.command import parser as command_parser
from tsvision.tools.serve.processes import wait_for

REPO = Path(__file__).resolve().parents[3]
PODMAN = ("podman", "--storage-driver", "vfs")
BASE_IMAGE = "localhost/debian-base:bookworm"
IMAGE = "localhost/tsvision-torchserve:dev"
SUITE = "bookworm"
BASE_PACKAGES = "python3,python3-venv,python3-pip,ca-certificates"
APT_SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
# This machine's wheels (pip's find-links and file:// indexes here): mounted into the build read-only and
# searched before PyPI, so torch and its libraries come from disk rather than a download.
LOCAL_WHEELS = (Path("/opt/wheels"), Path("/opt/pypi"), Path("/opt/pypi-more"))
KEY_FILE = "/home/model-server/key_file.json"
CONFIG_FILE = "/home/model-server/config.properties"  # what entrypoint.sh writes at start
BUILD_CERTIFICATES = "/tmp/host-ca-certificates.pem"  # where the host's CA bundle is mounted during RUN
RUN_LIMITS = ("--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096")
PORT_VARIABLES = ("INFERENCE", "MANAGEMENT", "METRICS", "GRPC_INFERENCE", "GRPC_MANAGEMENT")


class ContainerError(CommandError):
    """podman, debootstrap or the container failed; the message says which and why."""


def podman(*args: str, timeout: float = 3600, check: bool = True) -> subprocess.CompletedProcess:
    """``podman --storage-driver vfs ARGS``; a failure raises ContainerError with podman's last lines."""
    if shutil.which(PODMAN[0]) is None:
        raise ContainerError("podman is not installed (apt-get install podman runc debootstrap; scripts/setup.sh)")
    result = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise ContainerError(f"podman {args[0]} failed ({result.returncode}): {_tail(result.stderr or result.stdout)}")
    return result


def debian_mirror(sources: Sequence[Path] = APT_SOURCES) -> str:
    """The Debian mirror this machine's apt uses (deb822 ``URIs:`` or a ``deb URI SUITE`` line), not -security."""
    for path in sources:
        if not path.is_file():
            continue
        text = path.read_text()
        uris = re.findall(r"^URIs:\s*(\S+)", text, flags=re.M)
        uris += re.findall(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)", text, flags=re.M)
        for uri in uris:
            if not uri.rstrip("/").endswith("-security"):
                return uri
    raise ContainerError(f"no Debian mirror in {', '.join(map(str, sources))}")


def image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0


def make_base(name: str = BASE_IMAGE, mirror: Optional[str] = None, rebuild: bool = False) -> bool:
    """A minimal Debian bookworm with Python 3.11 as the image ``name`` (debootstrap, then podman import).
    Returns False when it already existed (kept unless ``rebuild``)."""
    if image_exists(name) and not rebuild:
        return False
    if shutil.which("debootstrap") is None:
        raise ContainerError("debootstrap is not installed (apt-get install debootstrap; scripts/setup.sh)")
    with tempfile.TemporaryDirectory(prefix="tsvision-base-") as temporary:
        root = Path(temporary) / "root"
        result = subprocess.run(["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", SUITE, str(root),
                                 mirror or debian_mirror()], capture_output=True, text=True, timeout=1800)
        if result.returncode != 0:
            raise ContainerError(f"debootstrap failed ({result.returncode}): {_tail(result.stdout + result.stderr)}")
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run([*PODMAN, "import", "-", name], stdin=tar.stdout, capture_output=True, text=True)
        tar.stdout.close()
        if tar.wait() != 0 or imported.returncode != 0:
            raise ContainerError(f"podman import failed: {_tail(imported.stderr)}")
    return True


def host_certificates() -> Optional[Path]:
    """The CA bundle this machine's pip trusts (``PIP_CERT``, ``REQUESTS_CA_BUNDLE``, ``SSL_CERT_FILE``), if any:
    where HTTPS goes through a proxy with its own certificate authority, the build's pip needs it too."""
    for variable in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        if os.environ.get(variable) and Path(os.environ[variable]).is_file():
            return Path(os.environ[variable])
    return None


def local_wheel_options(folders: Sequence[Path] = LOCAL_WHEELS, certificates: Optional[Path] = None) -> List[str]:
    """podman build options that use this machine's wheels: the folders mounted read-only, searched
    before PyPI, and no PyTorch index; ``certificates`` (a CA bundle) mounted for pip's HTTPS. Empty
    where the folders are missing (plain PyPI then). The mounts exist only while RUN steps run."""
    find_links, indexes = folders[0], [folder / "simple" for folder in folders[1:]]
    if not all(path.is_dir() for path in (find_links, *indexes)):
        return []
    pip = [f"--index-url file://{indexes[0]}", *(f"--extra-index-url file://{index}" for index in indexes[1:]),
           "--extra-index-url https://pypi.org/simple", f"--find-links {find_links}"]
    mounts = [option for folder in folders for option in ("-v", f"{folder}:{folder}:ro")]
    if certificates:
        mounts += ["-v", f"{certificates}:{BUILD_CERTIFICATES}:ro"]
        pip.append(f"--cert {BUILD_CERTIFICATES}")
    return [*mounts, "--build-arg", "TORCH_INDEX=", "--build-arg", "PIP_OPTIONS=" + " ".join(pip)]


def build_command(name: str = IMAGE, base: Optional[str] = BASE_IMAGE, build_args: Mapping[str, str] = (),
                  local_wheels: bool = True, context: Path = REPO) -> List[str]:
    """The podman build command line for ``Containerfile`` (HEALTHCHECK needs the docker format).

    ``--layers=false``: vfs stores every layer as a whole copy of the file system, and podman 4.3
    commits one for each instruction, metadata too: with the build's cache on, one build of this image
    took seven copies of 6.4 GB. Without it, the image is the base plus one layer, and every build is
    cold (overlay storage, elsewhere, caches as usual)."""
    command = [*PODMAN, "build", "--isolation", "chroot", "--network", "host", "--format", "docker", "--layers=false"]
    if base:
        command += ["--build-arg", f"BASE_IMAGE={base}"]
    if local_wheels:
        command += local_wheel_options(certificates=host_certificates())
    for key, value in dict(build_args).items():
        command += ["--build-arg", f"{key}={value}"]
    return command + ["-t", name, "-f", str(context / "Containerfile"), str(context)]


def image_id(name: str) -> Optional[str]:
    result = podman("image", "inspect", "--format", "{{.Id}}", name, check=False)
    return result.stdout.strip() if result.returncode == 0 else None


def build_image(command: Sequence[str], log: Path, replaces: Optional[str] = None) -> float:
    """Run ``build_command``'s command, its output into ``log``; the seconds it took. With ``replaces``
    (the tag being built), the image that tag named before is removed when the build made a new one:
    vfs stores each layer whole, so every replaced image would keep gigabytes."""
    before = image_id(replaces) if replaces else None
    started = time.monotonic()
    with open(log, "w") as output:
        result = subprocess.run(list(command), stdout=output, stderr=subprocess.STDOUT, timeout=3600)
    if result.returncode != 0:
        raise ContainerError(f"podman build failed ({result.returncode}): {_tail(log.read_text())} (log: {log})")
    seconds = time.monotonic() - started
    if before and image_id(replaces) != before:
        podman("rmi", before, check=False)  # refused (and kept) while a container still uses it
    return seconds


def remove_image(name: str) -> None:
    """Remove the image ``name`` if it exists (podman refuses while a container uses it)."""
    podman("rmi", name, check=False)


def image_size(name: str = IMAGE) -> int:
    """The image's size in bytes, as podman reports it."""
    return int(podman("image", "inspect", "--format", "{{.Size}}", name).stdout.strip())


class Container:
    """One container of the image on the host's network: started, waited for until healthy, stopped.

    ``ports`` sets TSVISION_*_PORT (keys: inference, management, metrics, grpc_inference,
    grpc_management); ``model_store`` is mounted read-only over the image's store."""

    def __init__(self, name: str, image: str = IMAGE, ports: Optional[Mapping[str, int]] = None,
                 model_store: Optional[Path] = None, env: Optional[Mapping[str, str]] = None) -> None:
        self.name, self.image = name, image
        self.ports = {key.lower(): int(port) for key, port in (ports or {}).items()}
        unknown = set(self.ports) - {variable.lower() for variable in PORT_VARIABLES}
        if unknown:
            raise ValueError(f"unknown port names {sorted(unknown)}; known: {[v.lower() for v in PORT_VARIABLES]}")
        self.model_store = Path(model_store).resolve() if model_store else None
        self.env = dict(env or {})
        self.started_at: Optional[float] = None

    @property
    def inference_port(self) -> int:
        return self.ports.get("inference", 8080)

    @property
    def management_port(self) -> int:
        return self.ports.get("management", 8081)

    def run_command(self) -> List[str]:
        # --health-interval disable: no systemd timer for the health check (none here); wait_healthy runs it.
        command = [*PODMAN, "--runtime", "runc", "run", "--detach", "--name", self.name, "--network", "host",
                   "--health-interval", "disable", *RUN_LIMITS]
        for key, port in self.ports.items():
            command += ["--env", f"TSVISION_{key.upper()}_PORT={port}"]
        for key, value in self.env.items():
            command += ["--env", f"{key}={value}"]
        if self.model_store:
            command += ["--volume", f"{self.model_store}:/opt/tsvision/model-store:ro"]
        return [*command, self.image]

    def start(self) -> "Container":
        self.started_at = time.monotonic()
        result = subprocess.run(self.run_command(), capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise ContainerError(f"podman run failed ({result.returncode}): {_tail(result.stderr)}")
        return self

    def state(self) -> Dict[str, object]:
        """podman's State of the container (Running, ExitCode, Health ...)."""
        return json.loads(podman("inspect", "--format", "{{json .State}}", self.name).stdout)

    def healthy(self) -> bool:
        """The image's HEALTHCHECK, run now (podman healthcheck run: exit status 0 when healthy)."""
        return podman("--runtime", "runc", "healthcheck", "run", self.name, check=False, timeout=60).returncode == 0

    def wait_healthy(self, timeout: float = 300) -> float:
        """Until the health check passes (every model's workers up); the seconds since ``start``."""
        def check() -> Optional[str]:
            if not self.state().get("Running"):
                raise ContainerError(f"container {self.name} exited ({self.state().get('ExitCode')}): "
                                     f"{_tail(self.logs())}")
            return None if self.healthy() else "health check not passing yet"
        wait_for(check, timeout, interval=1.0, what=f"container {self.name}")
        return time.monotonic() - (self.started_at or time.monotonic())

    def key(self, api: str = "inference") -> str:
        """The token for ``api`` from the key file TorchServe wrote inside the container."""
        text = podman("--runtime", "runc", "exec", self.name, "cat", KEY_FILE).stdout
        return json.loads(text)[api]["key"]

    def config(self) -> Dict[str, str]:
        """The config.properties the entry point wrote inside the container (later keys win, as in Java)."""
        text = podman("--runtime", "runc", "exec", self.name, "cat", CONFIG_FILE).stdout
        values: Dict[str, str] = {}
        for line in text.splitlines():
            if line.strip() and not line.lstrip().startswith("#") and "=" in line:
                key, value = line.split("=", 1)
                values[key.strip()] = value.strip()
        return values

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def stop(self, grace: int = 30) -> float:
        """``podman stop -t grace``: SIGTERM, SIGKILL after ``grace`` seconds; the seconds it took."""
        started = time.monotonic()
        podman("--runtime", "runc", "stop", "-t", str(grace), self.name, timeout=grace + 120)
        return time.monotonic() - started

    def remove(self) -> None:
        """Stop (by force) and remove the container, if it exists."""
        podman("--runtime", "runc", "rm", "--force", "--time", "10", self.name, check=False, timeout=300)


def _tail(text: str, lines: int = 5) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:]) or "no output"


@entry_point("tsvision container")
def main(argv: Optional[List[str]] = None) -> int:
    parser = command_parser("tsvision container", __doc__)
    commands = parser.add_subparsers(dest="action", required=True)
    base = commands.add_parser("base", help="make the Debian bookworm base image here (debootstrap)")
    base.add_argument("--name", default=BASE_IMAGE)
    base.add_argument("--rebuild", action="store_true", help="make it again even when it exists")
    build = commands.add_parser("build", help="build the image from this checkout")
    build.add_argument("--tag", default=IMAGE)
    build.add_argument("--base", default=BASE_IMAGE, help="BASE_IMAGE (default: the base made by 'base')")
    build.add_argument("--build-arg", action="append", default=[], metavar="KEY=VALUE",
                       help="ARCHIVES=model_store bakes the archives in; ONNXRUNTIME, TORCH_INDEX ... (Containerfile)")
    build.add_argument("--no-local-wheels", action="store_true", help="pip from the network only")
    run = commands.add_parser("run", help="start a container on the host's network and wait until it is healthy")
    run.add_argument("--tag", default=IMAGE)
    run.add_argument("--name", default="tsvision")
    run.add_argument("--model-store", type=Path, help="mounted read-only over the image's store")
    run.add_argument("--port", type=int, default=8080, help="the inference port (REST)")
    run.add_argument("--management-port", type=int, default=8081, help="on loopback only")
    run.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args(argv)
    if args.action == "base":
        made = make_base(args.name, rebuild=args.rebuild)
        print(f"{args.name}: {'made' if made else 'already there (--rebuild to make it again)'}")
    elif args.action == "build":
        if any("=" not in pair for pair in args.build_arg):
            raise UsageError("--build-arg takes KEY=VALUE")
        build_args = dict(pair.split("=", 1) for pair in args.build_arg)
        command = build_command(args.tag, args.base, build_args, local_wheels=not args.no_local_wheels)
        print(" ".join(command))
        seconds = build_image(command, Path(tempfile.gettempdir()) / "tsvision-container-build.log", args.tag)
        print(f"{args.tag}: built in {seconds:.0f} s, {image_size(args.tag) / 1e9:.2f} GB")
    else:
        container = Container(args.name, args.tag, {"inference": args.port, "management": args.management_port},
                              args.model_store)
        container.start()
        try:
            seconds = container.wait_healthy(args.timeout)
        except BaseException:
            container.remove()
            raise
        print(f"{args.name}: healthy after {seconds:.1f} s; inference on port {args.port} (every interface, token "
              f"needed: podman exec {args.name} cat {KEY_FILE}); stop with: podman --storage-driver vfs stop "
              f"{args.name}")
    return 0
