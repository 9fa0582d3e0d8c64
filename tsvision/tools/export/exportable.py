"""What an export builds: the module, its handler settings and labels (the input of ``model_files.export_files``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from torch import nn


@dataclass
class Exportable:
    task: str
    architecture: str
    module: nn.Module
    settings: dict
    labels: List[str]
    random_weights: bool
    output_names: List[str] = field(default_factory=list)
    weights: Optional[str] = None  # torchvision's pretrained weights, e.g. "MobileNet_V3_Small_Weights.IMAGENET1K_V1"


def write_report(out_dir: Path, exportable: Exportable, tolerance: float, **fields) -> dict:
    """Write ``report.json`` in ``out_dir``: the task and architecture, ``fields`` in order (with the
    backends' ``max_abs_diff`` per output), the ``tolerance``, and ``ok`` when every difference is within it."""
    report = {"task": exportable.task, "architecture": exportable.architecture, **fields, "tolerance": tolerance,
              "ok": all(v <= tolerance for v in fields["max_abs_diff"].values())}
    (Path(out_dir) / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
