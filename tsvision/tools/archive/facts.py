"""One record of what a model file is, read once (``inspection.inspect_model``) and then only looked at:
settings are resolved from it as a pure function (``resolve.resolve_settings``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np


@dataclass(frozen=True)
class ModelFacts:
    path: Path
    # an ONNX file's metadata_props (ultralytics: names, task, imgsz)
    metadata: Dict[str, str] = field(default_factory=dict)
    quantization: str = ""  # "int8" when the file is statically quantised (its metadata or its operators), else ""
    external_data: Tuple[Path, ...] = ()  # an ONNX file's weight files beside it
    whole_torchvision_detector: bool = False  # a scripted torchvision detector or its one-image ONNX export
    input_side: Optional[int] = None  # an ONNX input's fixed width, when it has one
    outputs: Optional[Tuple[np.ndarray, ...]] = None  # the outputs for one blank image (detection formats only)
