"""What an export builds: the module, its handler settings and labels (the input of ``model_files.export_files``)."""

from __future__ import annotations

from dataclasses import dataclass, field
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
