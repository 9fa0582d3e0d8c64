"""Build a TorchServe workflow archive (.war) from a workflow spec and its handler file of function nodes.

    tsvision workflow --name NAME [--store model_store] [--model NODE=ARCHIVE ...]
                      [--spec examples/workflows/detect_crop_classify.yaml]
                      [--handler examples/workflows/detect_crop_classify.py]

By default: the detect -> crop -> classify workflow of examples/workflows/ (detector
detection_onnx.mar, classifier classification_onnx.mar; --model detector=OTHER.mar swaps one). The
spec is checked first (every dag node a model node or a handler function, one start node, no cycle,
every model node's archive in --store), then packed by torch-workflow-archiver into STORE/NAME.war.
Register it on a TorchServe whose workflow store is that folder (by default its model store):

    curl -X POST -H "Authorization: Bearer $MANAGEMENT_KEY" "http://127.0.0.1:8081/workflows?url=NAME.war"
    curl -H "Authorization: Bearer $KEY" -H "Content-Type: image/jpeg" --data-binary @photo.jpg \\
         http://127.0.0.1:8080/wfpredict/NAME

docs/workflows.md: the nodes, the intermediate format, the answer and the limits.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from tsvision.tools.archive.cli import check_name
from tsvision.tools.archive.workflow import EXAMPLE_SPEC, build_workflow
from tsvision.tools.command import UsageError, entry_point, existing_file, writable_folder
from tsvision.tools.command import parser as command_parser


def model_pair(text: str) -> tuple:
    """``--model NODE=ARCHIVE`` -> (node, archive)."""
    node, sep, archive = text.partition("=")
    if not sep or not node or not archive:
        raise UsageError(f"--model expects NODE=ARCHIVE (e.g. detector=yolov8n_onnx.mar), got {text!r}")
    return node, archive


@entry_point("tsvision workflow")
def main(argv: Optional[List[str]] = None) -> int:
    parser = command_parser("tsvision workflow", __doc__)
    parser.add_argument("--name", required=True, help="the workflow's name: NAME.war, served on /wfpredict/NAME")
    parser.add_argument("--store", type=Path, default=Path("model_store"),
                        help="where the .war goes; the model nodes' archives must be there")
    parser.add_argument("--spec", type=existing_file, default=None,
                        help=f"the workflow spec YAML (default: {EXAMPLE_SPEC.relative_to(EXAMPLE_SPEC.parents[2])})")
    parser.add_argument("--handler", type=existing_file, default=None,
                        help="the handler file of the function nodes (default: the spec's name with .py)")
    parser.add_argument("--model", action="append", default=[], metavar="NODE=ARCHIVE",
                        help="use ARCHIVE (a .mar in --store) for model node NODE; repeatable")
    args = parser.parse_args(argv)
    check_name(args.name)
    spec = args.spec or EXAMPLE_SPEC
    if not spec.is_file():
        raise UsageError(f"no --spec given and the example spec {spec} is not here (an install without examples/)")
    handler = args.handler or spec.with_suffix(".py")
    if not handler.is_file():
        raise UsageError(f"--handler {handler}: no such file (give the handler of the spec's function nodes)")
    models = dict(model_pair(pair) for pair in args.model)
    archive = build_workflow(spec, handler, args.name, writable_folder(args.store, "--store"), models)
    print(f"{archive}  (register: POST /workflows?url={archive.name}; predict: /wfpredict/{args.name})")
    return 0
