"""torchvision classifiers as embedding backbones (``tsvision export --task embedding``): the classifier
head (``fc``, ``classifier``, ``heads`` or ``head``) replaced by ``Identity``, so the graph's ``embeddings``
output is the pooled features, N×D. The handler L2-normalises them (tsvision.serving.tasks.embedding)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torchvision
from torch import nn

from tsvision.tools.export.calibration import recompute_batchnorm
from tsvision.tools.export.checkpoints import read_state_dict
from tsvision.tools.export.exportable import Exportable
from tsvision.tools.export.pretrained import build_pretrained, settings_from_preset

DEFAULT_EMBEDDER = "resnet18"
HEADS = ("fc", "classifier", "heads", "head")  # the attribute holding a torchvision classifier's head
OUTPUT_NAMES = ["embeddings"]


class Embedder(nn.Module):
    """A classifier without its head: its output, flattened to N×D."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images).flatten(1)


def head_name(model: nn.Module, architecture: str = "") -> str:
    """The attribute of ``model`` that holds its classifier head; ``ValueError`` when it has none of ``HEADS``."""
    for name in HEADS:
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    raise ValueError(f"{architecture or type(model).__name__} has no classifier head named {' / '.join(HEADS)}: "
                     "export your backbone yourself (N×3×S×S in, N×D out) and archive it with --task embedding")


def drop_head(model: nn.Module, architecture: str = "") -> nn.Module:
    """``model`` with its head replaced by ``nn.Identity`` (in place), wrapped to answer N×D."""
    setattr(model, head_name(model, architecture), nn.Identity())
    return Embedder(model)


def load_embedder_checkpoint(model: nn.Module, path: Path, architecture: str = "") -> nn.Module:
    """A state dict of the whole classifier (head included: the head is dropped after loading) or of the
    backbone alone (saved after the head was replaced by ``Identity``); strict either way."""
    state = read_state_dict(path)
    try:
        model.load_state_dict(state, strict=True)
        return drop_head(model, architecture)
    except RuntimeError as whole:
        embedder = drop_head(model, architecture)
        try:
            embedder.model.load_state_dict(state, strict=True)
        except RuntimeError:
            raise ValueError(f"{path} fits neither {architecture} with its head nor without it: {whole}") from None
        return embedder


def build_embedder(architecture: Optional[str] = None, checkpoint: Optional[Path] = None, seed: int = 0,
                   model_args: Optional[dict] = None, weights: Optional[str] = None) -> Exportable:
    """A torchvision classifier as an embedding backbone: seeded random weights (BatchNorm conditioned on
    noise), a ``checkpoint``, or torchvision's pretrained ``weights``; preprocessing from the weights' preset."""
    architecture = architecture or DEFAULT_EMBEDDER
    classifiers = torchvision.models.list_models(module=torchvision.models)
    if architecture not in classifiers:
        raise ValueError(f"--task embedding takes a torchvision classifier (e.g. resnet50, mobilenet_v3_small, "
                         f"convnext_tiny, vit_b_16), not {architecture!r}")
    if weights is not None:
        model, preset, _ = build_pretrained("classification", architecture, weights, None, None, model_args)
    else:
        preset = torchvision.models.get_model_weights(architecture).DEFAULT
        torch.manual_seed(seed)
        model = torchvision.models.get_model(architecture, weights=None, **(model_args or {}))
    if checkpoint is not None:
        module = load_embedder_checkpoint(model, checkpoint, architecture)
    else:
        module = drop_head(model, architecture)
    module.eval()
    random_weights = checkpoint is None and weights is None
    settings = settings_from_preset("classification", preset)
    if random_weights:
        recompute_batchnorm(module, seed, (4, 3, settings["input_size"], settings["input_size"]), 4)
    return Exportable("embedding", architecture, module.eval(), settings, [], random_weights, list(OUTPUT_NAMES),
                      str(preset) if weights is not None else None)
