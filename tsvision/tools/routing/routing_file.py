"""The routing file (``tsvision route``'s input): a model, its weighted variants, a sticky header and an optional
shadow."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import yaml


@dataclass(frozen=True)
class Variant:
    version: str
    weight: float


@dataclass(frozen=True)
class Routing:
    model: str
    variants: List[Variant]
    sticky_header: Optional[str] = None
    shadow: Optional[str] = None

    @classmethod
    def load(cls, path: Path) -> "Routing":
        return cls.from_mapping(yaml.safe_load(Path(path).read_text()))

    @classmethod
    def from_mapping(cls, data: dict) -> "Routing":
        if not isinstance(data, dict):
            raise ValueError("the routing file must be a mapping with model, variants, and optionally sticky_header, "
                             "shadow")
        unknown = set(data) - {"model", "variants", "sticky_header", "shadow"}
        if unknown:
            raise ValueError(f"unknown routing keys {sorted(unknown)}")
        model = str(data.get("model") or "")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_\-.]*", model):
            raise ValueError(f"model must be a TorchServe model name, got {model!r}")
        variants = [Variant(str(v["version"]), float(v["weight"])) for v in data.get("variants") or []]
        if not variants:
            raise ValueError("at least one variant is needed")
        versions = [v.version for v in variants]
        if len(set(versions)) != len(versions):
            raise ValueError(f"a version appears twice among the variants: {versions}")
        if any(v.weight < 0 for v in variants) or abs(sum(v.weight for v in variants) - 100) > 1e-6:
            raise ValueError(f"variant weights must not be negative and must sum to 100, got "
                             f"{[v.weight for v in variants]}")
        shadow = str(data["shadow"]) if data.get("shadow") is not None else None
        if shadow in versions:
            raise ValueError(f"the shadow version {shadow} is also a variant; a shadow only receives copies")
        header = data.get("sticky_header")
        if header is not None and not re.fullmatch(r"[A-Za-z0-9-]+", str(header)):
            raise ValueError(f"sticky_header must be an HTTP header name, got {header!r}")
        for version in versions + ([shadow] if shadow else []):
            if not re.fullmatch(r"[A-Za-z0-9_.\-]+", version):
                raise ValueError(f"bad version {version!r}")
        return cls(model, variants, header, shadow)

    def weights(self) -> Dict[str, float]:
        return {v.version: v.weight for v in self.variants}

    def with_weights(self, weights: Dict[str, float]) -> "Routing":
        """The same routing with new weights (versions not named keep weight 0; new ones are added)."""
        versions = [v.version for v in self.variants] + [v for v in weights if v not in self.weights()]
        return Routing.from_mapping({"model": self.model, "sticky_header": self.sticky_header, "shadow": self.shadow,
                                     "variants": [{"version": v, "weight": weights.get(v, 0)} for v in versions]})

    def to_mapping(self) -> dict:
        data = {"model": self.model}
        if self.sticky_header:
            data["sticky_header"] = self.sticky_header
        data["variants"] = [{"version": v.version, "weight": v.weight} for v in self.variants]
        if self.shadow:
            data["shadow"] = self.shadow
        return data
