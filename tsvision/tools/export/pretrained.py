"""torchvision's pretrained weights for ``tsvision export --weights NAME`` (export time only).

``NAME`` is ``DEFAULT`` or any member of the architecture's weights enum (``IMAGENET1K_V1``, or
the full ``MobileNet_V3_Small_Weights.IMAGENET1K_V1``). The file goes through torch's hub cache,
``$TORCH_HOME/hub/checkpoints/<file name in the URL>`` (``~/.cache/torch/hub/checkpoints`` by
default), exactly where torchvision's own builders look: a cached file (downloaded earlier, or
placed there by hand) loads without the network. A missing file is downloaded with a socket
timeout, so a host without internet fails in seconds with one line saying which file to place
where; ``TSVISION_OFFLINE=1`` never tries the network.
"""

from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path
from typing import List, Optional
from urllib.parse import urlparse

import torch
import torchvision
import torchvision.models as models

DOWNLOAD_TIMEOUT = 30.0  # seconds without an answer (connect or read) before a download gives up
OFFLINE_VARIABLE = "TSVISION_OFFLINE"


class WeightsError(ValueError):
    """A weights name that does not exist, or a weights file that is neither cached nor downloadable."""


def architectures_with_weights(task: str) -> List[str]:
    """torchvision's architectures for ``task`` that have pretrained weights (what ``--weights`` takes)."""
    module = {"classification": models, "segmentation": models.segmentation}.get(task, models.detection)
    names = models.list_models(module=module)
    if task == "keypoints":
        return [n for n in names if n.startswith("keypointrcnn")]
    if task == "instance_segmentation":
        return [n for n in names if n.startswith("maskrcnn")]
    if task == "detection":
        return [n for n in names if not n.startswith(("keypointrcnn", "maskrcnn"))]
    return names


def resolve_weights(task: str, architecture: str, name: str):
    """The weights enum member ``name`` (``DEFAULT``, ``IMAGENET1K_V1`` or ``Enum.MEMBER``) of ``architecture``."""
    known = architectures_with_weights(task)
    if architecture not in known:
        raise WeightsError(f"{architecture} has no torchvision pretrained weights for --task {task} (tsvision's own "
                           "build, or another task's model); "
                           f"--weights works with: {', '.join(known)}")
    enum = models.get_model_weights(architecture)
    prefix, _, member = name.rpartition(".")
    if prefix and prefix != enum.__name__:
        raise WeightsError(f"{name} are not weights of {architecture}; its weights are {enum.__name__}."
                           f"{{{', '.join(['DEFAULT'] + [w.name for w in enum])}}}")
    try:
        return enum[member] if member != "DEFAULT" else enum.DEFAULT
    except KeyError:
        raise WeightsError(f"{architecture} has no weights {member!r}; known: "
                           f"{', '.join(['DEFAULT'] + [w.name for w in enum])}") from None


def cache_file(weights) -> Path:
    """Where torch's hub cache keeps ``weights``' file (torch.hub.load_state_dict_from_url's rule)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def ensure_cached(weights, timeout: float = DOWNLOAD_TIMEOUT) -> Path:
    """``weights``' file in the hub cache: already there, or downloaded (its hash prefix checked, as
    torchvision does); a :class:`WeightsError` of one line if neither works."""
    path = cache_file(weights)
    if path.is_file():
        return path
    where = (f"fetch {weights.url} on a machine with internet and place it at {path} "
             "(torch's hub cache, $TORCH_HOME/hub/checkpoints; "
             f"TORCH_HOME is {os.environ.get('TORCH_HOME', 'not set')})")
    if os.environ.get(OFFLINE_VARIABLE, "") not in ("", "0"):
        raise WeightsError(f"{path.name} is not in the hub cache and {OFFLINE_VARIABLE} is set: {where}")
    path.parent.mkdir(parents=True, exist_ok=True)
    match = torch.hub.HASH_REGEX.search(path.name)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)  # urllib's connect and reads: no hang for minutes without a network
    try:
        torch.hub.download_url_to_file(weights.url, str(path), match.group(1) if match else None, progress=True)
    except Exception as error:  # noqa: BLE001 - URLError, timeouts, a hash mismatch: all mean "not here"
        reason = str(getattr(error, "reason", None) or error).splitlines()[0] if str(error) else type(error).__name__
        raise WeightsError(f"cannot download {path.name} ({reason}): {where}") from None
    finally:
        socket.setdefaulttimeout(previous)
    return path


def build_pretrained(task: str, architecture: str, name: str, num_classes: Optional[int], labels: Optional[List[str]],
                     model_args: Optional[dict] = None):
    """torchvision's ``architecture`` with the weights ``name`` loaded from the hub cache (eval mode),
    the weights enum member, and the class names (the weights' categories, or ``labels`` renaming them)."""
    weights = resolve_weights(task, architecture, name)
    categories = list(weights.meta["categories"])
    if num_classes is not None and num_classes != len(categories):
        raise WeightsError(f"{weights} has {len(categories)} classes, not --num-classes {num_classes}; "
                           "to train other classes, fine-tune and export with --checkpoint")
    if labels is not None and len(labels) != len(categories):
        raise WeightsError(f"{weights} has {len(categories)} classes but --labels names {len(labels)}")
    path = ensure_cached(weights)
    try:
        model = torchvision.models.get_model(architecture, weights=weights, **(model_args or {}))
    except (RuntimeError, EOFError, OSError,
            pickle.UnpicklingError) as error:  # a truncated or foreign file placed by hand
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise WeightsError(f"{path} does not hold {weights} ({first}); "
                           f"delete it and place the file from {weights.url}") from None
    return model.eval(), weights, labels if labels is not None else categories


def settings_from_preset(task: str, weights) -> dict:
    """Handler settings from ``weights.transforms()`` (classification: crop, resize, filter, mean,
    std; segmentation: resize, mean, std); detectors normalise inside and need none."""
    transforms = weights.transforms()
    if task == "classification":
        return {"input_size": transforms.crop_size[0], "resize_size": transforms.resize_size[0],
                "interpolation": transforms.interpolation.value, "mean": list(transforms.mean),
                "std": list(transforms.std)}
    if task == "segmentation":
        return {"input_size": transforms.resize_size[0], "mean": list(transforms.mean), "std": list(transforms.std)}
    return {}

