"""State dicts saved with ``torch.save``, read for ``--checkpoint``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def read_state_dict(path: Path) -> dict:
    """A state dict saved with ``torch.save`` (plain, or under "state_dict"/"model"; DataParallel's
    "module." prefixes removed)."""
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_checkpoint(model: nn.Module, path: Path) -> None:
    """Strictly load a state dict saved with ``torch.save``."""
    model.load_state_dict(read_state_dict(path), strict=True)
