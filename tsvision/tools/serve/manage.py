"""Drive TorchServe's management API: versions, defaults, workers, promotion and rollback.

    tsvision manage [--management URL] [--key-file key_file.json] COMMAND ...

Commands: list, register ARCHIVE, scale NAME VERSION WORKERS, set-default NAME VERSION,
promote NAME VERSION, rollback NAME [--to VERSION], retire NAME VERSION.

TorchServe ignores ``defaultVersion`` when several versions load at start-up
(pytorch/serve#2744), so defaults are always set explicitly and then read back.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict, List, Optional, Union

import requests

from tsvision.tools.command import CommandError, UsageError, entry_point, existing_file, positive_int
from tsvision.tools.command import parser as command_parser
from tsvision.tools.serve.keys import KEY_FILE_HELP, checked_key, key_file_or_default, read_key, token_hint


class ManagementError(RuntimeError):
    pass


def version_key(version: str) -> tuple:
    """'1.10' sorts after '1.9': numeric parts compare as numbers."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in version.replace("-", ".").split("."))


def verify_archive(path: Path) -> str:
    """The archive's SHA-256 if it matches the one recorded beside it; ``ManagementError`` if not."""
    recorded = path.with_suffix(".mar.sha256")
    if not path.exists():
        raise ManagementError(f"{path} does not exist")
    if not recorded.exists():
        raise ManagementError(f"{path.name} has no recorded hash ({recorded.name}); build it with "
                              f"tsvision.tools.archive")
    expected = recorded.read_text().split()[0]
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if actual != expected:
        raise ManagementError(f"{path.name} does not match its recorded SHA-256 (recorded {expected[:16]}..., "
                              f"found {actual[:16]}...): refusing to register a changed archive")
    return actual


class Management:
    def __init__(self, url: str = "http://127.0.0.1:8081", key_file: Optional[Path] = Path("key_file.json"),
                 timeout: float = 120, verify: Union[bool, str] = True) -> None:
        """``verify``: over https, the server's certificate (or CA) file to trust; True for the system's CAs."""
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.verify = verify  # passed per request: REQUESTS_CA_BUNDLE would override Session.verify (psf/requests#3829)
        self.session = requests.Session()
        key = read_key(key_file, "management")
        if key:
            self.session.headers["Authorization"] = f"Bearer {key}"

    def _call(self, method: str, path: str, **params) -> object:
        response = self.session.request(method, f"{self.url}{path}", params=params or None, timeout=self.timeout,
                                        verify=self.verify)
        if response.status_code == 405 and method == "POST" and path == "/models":
            raise ManagementError("TorchServe refuses registration: the model API is off (enable_model_api=false, the "
                                  "serving profile). Use the development profile (enable_model_api=true, "
                                  "tsvision.tools.serve.server.DEVELOPMENT_PROFILE) to register.")
        if response.status_code >= 400:
            try:
                message = response.json().get("message", response.text)
            except ValueError:
                message = response.text
            raise ManagementError(f"{method} {path}: HTTP {response.status_code}: {message}")
        return response.json() if response.content else {}

    # -- reading -------------------------------------------------------------------------
    def listing(self) -> List[dict]:
        """TorchServe's ``GET /models``: ``{"modelName", "modelUrl"}`` per model."""
        return self._call("GET", "/models")["models"]

    def models(self) -> List[str]:
        return [m["modelName"] for m in self.listing()]

    def versions(self, name: str) -> List[dict]:
        return sorted(self._call("GET", f"/models/{name}/all"), key=lambda d: version_key(d["modelVersion"]))

    def default_version(self, name: str) -> str:
        return self._call("GET", f"/models/{name}")[0]["modelVersion"]

    def summary(self) -> Dict[str, List[dict]]:
        """{name: [{"version", "default", "workers", "ready"}]} for every model."""
        result = {}
        for name in self.models():
            default = self.default_version(name)
            result[name] = [{"version": d["modelVersion"], "default": d["modelVersion"] == default,
                             "workers": len(d["workers"]), "ready": sum(w["status"] == "READY" for w in d["workers"])}
                            for d in self.versions(name)]
        return result

    # -- changing ------------------------------------------------------------------------
    def register(self, archive: str, workers: int = 1, store: Optional[Path] = None) -> dict:
        """Register an archive that is already in TorchServe's model store (a file name, no URL).

        ``workers`` is TorchServe's ``initial_workers``, which TorchServe uses only for an archive whose
        model-config names no ``minWorkers`` (without it such an archive would start none); ``tsvision
        archive`` always names them (2 by default), and ``scale`` changes the count afterwards. With
        ``store`` (the model store as this machine sees it) the archive's SHA-256 must match the
        ``.mar.sha256`` recorded when it was built; otherwise it is refused."""
        if "://" in archive or "/" in archive:
            raise ManagementError(f"{archive!r}: give the file name of an archive in the model store, "
                                  "not a path or URL")
        if store is not None:
            verify_archive(Path(store) / archive)
        return self._call("POST", "/models", url=archive, initial_workers=workers, synchronous="true")

    def scale(self, name: str, version: str, workers: int) -> dict:
        return self._call("PUT", f"/models/{name}/{version}", min_worker=workers, max_worker=workers,
                          synchronous="true")

    def set_default(self, name: str, version: str) -> str:
        self._call("PUT", f"/models/{name}/{version}/set-default")
        actual = self.default_version(name)
        if actual != version:
            raise ManagementError(f"{name}: asked for default {version}, TorchServe reports {actual}")
        return actual

    def promote(self, name: str, version: str) -> str:
        """Make ``version`` the default once it has READY workers (scaled to 1 if it has none)."""
        described = {d["modelVersion"]: d for d in self.versions(name)}
        if version not in described:
            raise ManagementError(f"{name} has no version {version}; registered: {sorted(described, key=version_key)}")
        if not any(w["status"] == "READY" for w in described[version]["workers"]):
            self.scale(name, version, 1)
        return self.set_default(name, version)

    def rollback(self, name: str, to: Optional[str] = None) -> str:
        """Default back to ``to``, or to the highest version below the current default."""
        current = self.default_version(name)
        if to is None:
            older = [d["modelVersion"] for d in self.versions(name)
                     if version_key(d["modelVersion"]) < version_key(current)]
            if not older:
                raise ManagementError(f"{name}: no version older than the default {current} to roll back to")
            to = older[-1]
        return self.promote(name, to)

    def retire(self, name: str, version: str) -> dict:
        if self.default_version(name) == version and len(self.versions(name)) > 1:
            raise ManagementError(f"{name} {version} is the default: promote another version first")
        return self._call("DELETE", f"/models/{name}/{version}")


@entry_point("tsvision manage")
def main(argv: Optional[List[str]] = None) -> int:
    parser = command_parser("tsvision manage", __doc__)
    parser.add_argument("--management", default="http://127.0.0.1:8081", help="management API address")
    parser.add_argument("--key-file", type=existing_file, help=KEY_FILE_HELP)
    parser.add_argument("--tls-cert", type=existing_file,
                        help="over https: the server's certificate (or its CA) to trust")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("list", help="models, versions, defaults and workers")
    register = commands.add_parser("register", help="register an archive from the model store")
    register.add_argument("archive", help="file name of the .mar in TorchServe's model store")
    register.add_argument("--workers", type=positive_int, default=1,
                          help="workers to start for an archive whose model-config names none (TorchServe starts "
                          "an archive's own minWorkers: 2 for tsvision archive's; change it with scale)")
    register.add_argument("--store", type=Path, default=Path("model_store"),
                          help="the model store on this machine, to check the archive's recorded SHA-256")
    register.add_argument("--skip-integrity-check", action="store_true",
                          help="register without checking the hash (when the store is not on this machine)")
    scale = commands.add_parser("scale", help="set a version's worker count")
    scale.add_argument("name"), scale.add_argument("version"), scale.add_argument("workers", type=int)
    for command, said in (("set-default", "make a version the default"),
                          ("promote", "scale a version to 1 worker if it has none, then make it the default"),
                          ("retire", "unregister a version (refused for the default)")):
        sub = commands.add_parser(command, help=said)
        sub.add_argument("name"), sub.add_argument("version")
    rollback = commands.add_parser("rollback", help="default back to the previous version")
    rollback.add_argument("name")
    rollback.add_argument("--to", help="the version to go back to (default: the highest below the current default)")
    args = parser.parse_args(argv)

    key_file = key_file_or_default(args.key_file)
    checked_key(key_file, "management")
    client = Management(args.management, key_file, verify=str(args.tls_cert) if args.tls_cert else True)
    try:
        if args.command == "list":
            for name, versions in client.summary().items():
                for v in versions:
                    print(f"{name:28s} {v['version']:8s} {'default' if v['default'] else '':8s} workers "
                          f"{v['ready']}/{v['workers']} READY")
        elif args.command == "register":
            store = None if args.skip_integrity_check else args.store
            if store is not None and "/" not in args.archive and not (store / args.archive).is_file():
                raise UsageError(f"{store / args.archive}: no such archive in --store {store}")
            print(client.register(args.archive, args.workers, store).get("status", "registered"))
        elif args.command == "scale":
            print(client.scale(args.name, args.version, args.workers).get("status", "scaled"))
        elif args.command in ("set-default", "promote"):
            method = client.set_default if args.command == "set-default" else client.promote
            print(f"{args.name}: default version is now {method(args.name, args.version)} (verified)")
        elif args.command == "rollback":
            print(f"{args.name}: rolled back; default version is now {client.rollback(args.name, args.to)} (verified)")
        elif args.command == "retire":
            print(client.retire(args.name, args.version).get("status", "unregistered"))
    except ManagementError as error:
        raise CommandError(f"{args.management}: {error}{token_hint(str(error), key_file)}") from error
    return 0

