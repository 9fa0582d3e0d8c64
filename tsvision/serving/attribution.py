"""Saliency for one classified image: which input pixels moved the score of one class.

Two methods, both on the model input (the centre crop, normalised, 1×3×S×S):

- ``integrated_gradients``: Captum's Integrated Gradients from a baseline of zeros (the mean
  colour after normalisation) to the image, ``steps`` points; needs a model with gradients
  (TorchScript). Captum is imported here only, when asked: a worker without it still predicts.
- ``occlusion``: a ``window``×``window`` square of the mean colour slid with ``stride``; a
  pixel's attribution is the mean drop of the class score over the windows that covered it
  (Captum's ``Occlusion`` arithmetic), the occluded images run through the runtime in batches of
  ``OCCLUSION_BATCH``. It needs forward passes only: every backend (ONNX Runtime, .pt2, TorchScript).

``saliency`` is the attribution's magnitude per pixel (summed over the colour channels);
``to_grid`` averages it into a small grid over the ORIGINAL image (the crop's place in it), so
the answer keeps the photo's aspect ratio and says nothing about the parts the model never saw.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import numpy as np

from tsvision.serving.errors import RequestError

METHODS = ("integrated_gradients", "occlusion")
OCCLUSION_BATCH = 16  # occluded images per forward pass
IG_BATCH = 16  # Integrated Gradients' points per forward and backward pass (Captum's internal_batch_size)
Box = Tuple[float, float, float, float]


def first_output(outputs: Any) -> Any:
    """The class scores: a model's first output (a tensor, or the first of a tuple/list/dict)."""
    while isinstance(outputs, (list, tuple, dict)):
        outputs = next(iter(outputs.values())) if isinstance(outputs, dict) else outputs[0]
    return outputs


def scores(runtime: Any, batch: np.ndarray) -> np.ndarray:
    """N×C class scores (the model's own output: logits or probabilities) of a normalised batch."""
    return np.asarray(runtime.run(batch)[0], dtype=np.float64).reshape(len(batch), -1)


def integrated_gradients(runtime: Any, image: np.ndarray, target: int, steps: int) -> Tuple[np.ndarray, float]:
    """(3×S×S attribution, Captum's convergence delta) of class ``target`` for one normalised
    3×S×S image. Raises a 501 ``RequestError`` when the runtime has no differentiable module or
    captum is missing."""
    module: Optional[Callable] = getattr(runtime, "module", None)
    if module is None:
        raise RequestError(501, "NotSupported",
                           f"method 'integrated_gradients' needs a model with gradients (TorchScript); this "
                           f"archive's backend is {runtime.name}: ask for method 'occlusion'")
    try:
        from captum.attr import IntegratedGradients  # optional (tsvision[explain]): only explanations need it
    except ImportError:
        raise RequestError(501, "NotSupported",
                           "method 'integrated_gradients' needs captum, which this worker lacks: install "
                           "tsvision[explain] (captum) where TorchServe runs, or ask for method 'occlusion'") from None
    import torch

    device = getattr(runtime, "device", "cpu")
    inputs = torch.from_numpy(np.ascontiguousarray(image[None])).to(device)
    explainer = IntegratedGradients(lambda x: first_output(module(x)))
    with torch.enable_grad():
        attribution, delta = explainer.attribute(inputs, baselines=torch.zeros_like(inputs), target=int(target),
                                                 n_steps=int(steps), internal_batch_size=IG_BATCH,
                                                 return_convergence_delta=True)
    return attribution[0].detach().cpu().numpy().astype(np.float64), float(delta.abs().max())


def window_starts(size: int, window: int, stride: int) -> list:
    """Where the windows start along one side: every ``stride``, and one flush with the far edge."""
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def occlusion_count(size: int, window: int, stride: int) -> int:
    """How many occluded images (forward passes) a ``window``/``stride`` costs on an S×S input."""
    return len(window_starts(size, window, stride)) ** 2


def occlusion(runtime: Any, image: np.ndarray, target: int, window: int, stride: int) -> np.ndarray:
    """S×S attribution of class ``target`` for one normalised 3×S×S image: per pixel, the mean
    drop of the score over the windows that covered it (the mean colour, zeros, in the window)."""
    size = image.shape[-1]
    base = scores(runtime, image[None])[0, target]
    corners = [(y, x) for y in window_starts(image.shape[-2], window, stride)
               for x in window_starts(size, window, stride)]
    total = np.zeros(image.shape[-2:], dtype=np.float64)
    covered = np.zeros(image.shape[-2:], dtype=np.float64)
    for start in range(0, len(corners), OCCLUSION_BATCH):
        chunk = corners[start:start + OCCLUSION_BATCH]
        batch = np.repeat(image[None], len(chunk), axis=0)
        for row, (y, x) in enumerate(chunk):
            batch[row, :, y:y + window, x:x + window] = 0.0
        drops = base - scores(runtime, batch)[:, target]
        for drop, (y, x) in zip(drops, chunk):
            total[y:y + window, x:x + window] += drop
            covered[y:y + window, x:x + window] += 1
    return total / np.maximum(covered, 1)


def saliency(attribution: np.ndarray) -> np.ndarray:
    """S×S magnitude: the absolute attribution, summed over the channels of a 3×S×S one."""
    magnitude = np.abs(attribution)
    return magnitude.sum(axis=0) if magnitude.ndim == 3 else magnitude


def grid_size(width: int, height: int, cells: int) -> Tuple[int, int]:
    """(columns, rows) of a grid with ``cells`` along the image's longer side, in its aspect ratio."""
    longer = max(width, height)
    return max(1, round(cells * width / longer)), max(1, round(cells * height / longer))


def _overlaps(cells: int, extent: float, start: float, stop: float, pixels: int) -> np.ndarray:
    """cells×pixels: the share of each grid cell (of an ``extent``-long side) that each model-input
    pixel covers, the input spanning ``start``..``stop`` of that side; outside it, nothing."""
    edges = np.linspace(0.0, extent, cells + 1)
    low = (edges[:-1] - start) * pixels / (stop - start)  # cell edges in input pixels
    high = (edges[1:] - start) * pixels / (stop - start)
    index = np.arange(pixels, dtype=np.float64)
    shared = np.clip(np.minimum(high[:, None], index[None, :] + 1) - np.maximum(low[:, None], index[None, :]), 0, None)
    return shared / (high - low)[:, None]


def to_grid(values: np.ndarray, box: Box, image_size: Tuple[int, int], cells: int) -> np.ndarray:
    """rows×columns mean of an S×S map over a grid on the original image (``grid_size``), the map
    covering ``box`` (x1, y1, x2, y2 in original pixels: the crop the model saw); zero outside it."""
    width, height = image_size
    columns, rows = grid_size(width, height, cells)
    across = _overlaps(columns, width, box[0], box[2], values.shape[1])
    down = _overlaps(rows, height, box[1], box[3], values.shape[0])
    return down @ values @ across.T


def normalised(grid: np.ndarray) -> Tuple[np.ndarray, float]:
    """(the grid scaled to a peak of 1, the peak); all zeros stay zeros."""
    peak = float(grid.max(initial=0.0))
    return (grid / peak if peak > 0 else np.zeros_like(grid)), peak

