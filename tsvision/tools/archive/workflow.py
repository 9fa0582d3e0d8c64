"""Pack a TorchServe workflow archive (``.war``): a workflow spec and its handler file of function nodes,
checked first, through ``torch-workflow-archiver``, with a ``.sha256`` beside the ``.war``.

The spec is TorchServe's (docs/workflows.md): ``models`` (the defaults of every model node, and each
model node's ``url``, a ``.mar`` in the model store) and ``dag`` (each node -> the nodes it feeds).
A ``dag`` node that is not a model is a function of the handler file.
"""

from __future__ import annotations

import ast
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Mapping, Optional

import yaml

from tsvision.tools.archive.package import archiver_path, record_sha256, run_archiver
from tsvision.tools.command import CommandError, UsageError

# The models section's keys that are defaults for every model node, not nodes (TorchServe's WorkFlow).
MODEL_DEFAULTS = ("min-workers", "max-workers", "batch-size", "max-batch-delay", "retry-attempts", "timeout-ms")
REPO = Path(__file__).resolve().parents[3]
EXAMPLE_SPEC = REPO / "examples" / "workflows" / "detect_crop_classify.yaml"


def read_spec(spec: Path) -> dict:
    """The workflow spec as a mapping with ``models`` and ``dag``; a :class:`UsageError` naming what is wrong."""
    try:
        loaded = yaml.safe_load(Path(spec).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--spec {spec}: no such file") from None
    except yaml.YAMLError as error:
        raise UsageError(f"--spec {spec} is not YAML: {error}") from None
    if not isinstance(loaded, dict) or not isinstance(loaded.get("models"), dict) or not isinstance(
            loaded.get("dag"), dict):
        raise UsageError(f"--spec {spec}: a workflow spec is a mapping with 'models' and 'dag' (docs/workflows.md)")
    return loaded


def model_nodes(spec: Mapping) -> Dict[str, str]:
    """``{node: archive url}`` of the spec's model nodes."""
    nodes = {}
    for name, value in spec["models"].items():
        if name in MODEL_DEFAULTS:
            continue
        if not isinstance(value, dict) or not isinstance(value.get("url"), str):
            raise UsageError(f"model node {name!r} needs a 'url' (its .mar in the model store)")
        nodes[name] = value["url"]
    return nodes


def handler_functions(handler: Path) -> List[str]:
    """The top-level functions the handler file defines."""
    try:
        tree = ast.parse(Path(handler).read_text(encoding="utf-8"), filename=str(handler))
    except SyntaxError as error:
        raise UsageError(f"--handler {handler} is not valid Python: {error}") from None
    return [node.name for node in tree.body if isinstance(node, ast.FunctionDef)]


def check_dag(spec: Mapping, functions: List[str]) -> List[str]:
    """The dag's nodes in an order where every node comes after its parents. Every node is a model
    node or a handler function, there is one start node, and no cycle (what TorchServe refuses
    at registration, said here by name)."""
    dag = spec["dag"]
    children = {name: [c for c in (targets or []) if c] for name, targets in dag.items()}
    if not all(isinstance(targets, list) for targets in children.values()):
        raise UsageError("each dag entry is 'node: [nodes it feeds]'")
    nodes = sorted(set(children) | {c for targets in children.values() for c in targets})
    known = set(model_nodes(spec)) | set(functions)
    unknown = [name for name in nodes if name not in known]
    if unknown:
        raise UsageError(f"dag node(s) {', '.join(unknown)}: neither a model node (under 'models', with a url) nor a "
                         f"function of the handler file ({', '.join(functions) or 'none defined'})")
    parents = {name: [p for p, targets in children.items() if name in targets] for name in nodes}
    starts = [name for name in nodes if not parents[name]]
    if len(starts) != 1:
        raise UsageError(f"a workflow dag has exactly one start node; this one has {len(starts)} "
                         f"({', '.join(starts) or 'a cycle'})")
    order: List[str] = []
    while len(order) < len(nodes):
        ready = [n for n in nodes if n not in order and all(p in order for p in parents[n])]
        if not ready:
            raise UsageError(f"the dag has a cycle among {', '.join(n for n in nodes if n not in order)}")
        order.extend(ready)
    return order


def build_workflow(spec: Path, handler: Path, name: str, store: Path,
                   models: Optional[Mapping[str, str]] = None) -> Path:
    """Write ``store/<name>.war`` and its ``.sha256``; return the archive path. ``models`` replaces
    model nodes' urls (``{"detector": "other.mar"}``); every model node's archive must be in ``store``
    (TorchServe's workflow store is its model store unless configured otherwise)."""
    loaded = read_spec(spec)
    nodes = model_nodes(loaded)
    for node, url in (models or {}).items():
        if node not in nodes:
            raise UsageError(f"--model {node}={url}: the spec has no model node {node!r} "
                             f"(it has {', '.join(nodes) or 'none'})")
        loaded["models"][node] = {**loaded["models"][node], "url": url}
    check_dag(loaded, handler_functions(handler))
    store = Path(store)
    missing = [f"{node}: {url}" for node, url in model_nodes(loaded).items()
               if "://" not in url and not (store / url).is_file()]
    if missing:
        raise UsageError(f"not in {store}: {'; '.join(missing)} (build the archives first, or --model NODE=ARCHIVE)")
    archiver = archiver_path("torch-workflow-archiver")
    if not archiver.exists():
        raise CommandError("torch-workflow-archiver is not installed: pip install -e \".[workflows]\"")
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tsvision-workflow-") as tmp:
        written = Path(tmp) / Path(spec).name
        written.write_text(yaml.safe_dump(loaded, sort_keys=False))
        command = [str(archiver), "--workflow-name", name, "--spec-file", str(written), "--handler", str(handler),
                   "--export-path", tmp, "--force"]
        run_archiver(command, Path(tmp))
        archive = store / f"{name}.war"
        shutil.move(str(Path(tmp) / f"{name}.war"), str(archive))
    record_sha256(archive)
    return archive
