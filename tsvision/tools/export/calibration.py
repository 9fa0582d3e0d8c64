"""Images that random weights are conditioned on (export time only).

Randomly initialised networks respond to photos and to synthetic images very differently (a
detector conditioned on synthetic images finds nothing in a photo), so where scikit-image is
installed (the test and examples extras) its photos are used; elsewhere seeded synthetic images
that look a little like photos (``smooth_image``).
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np
import torch
from PIL import Image
from torch import nn

# Random weights are conditioned (torchvision_detectors.condition_random_detector, mask_rcnn.condition_on_photos,
# ultralytics_models.condition_random_yolo): one class is made to stand out, its logit spread to this
# standard deviation over the calibration images.
LOGIT_SPREAD = 3.0
CONDITIONED_CLASS = 1  # COCO's "person" in a torchvision detector
# A conditioned torchvision detector's class scores spread over (0, 1); this threshold keeps a handful of
# boxes per photo (the exported settings' score_threshold and the model's own roi_heads.score_thresh).
CONDITIONED_SCORE_THRESHOLD = 0.15

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "cat")
SYNTHETIC_SIZE = (480, 640)


def smooth_image(height: int, width: int, seed: int, shapes: int = 24) -> torch.Tensor:
    """A seeded 3×H×W image in [0, 1] that looks a little like a photo: smooth colour regions
    (upsampled noise), flat rectangles with sharp edges, and fine grain."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(2, height // 24), max(2, width // 24), generator=generator)
    image = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[0]
    for _ in range(shapes):
        y, x = (torch.rand(2, generator=generator) * torch.tensor([height, width])).long().tolist()
        h, w = (torch.rand(2, generator=generator) * torch.tensor([height / 3, width / 3])).long().tolist()
        image[:, y:y + h + 4, x:x + w + 4] = torch.rand(3, 1, 1, generator=generator)
    image += 0.04 * torch.randn(image.shape, generator=generator)
    return image.clamp(0, 1)


def calibration_images(seed: int = 0) -> Tuple[List[torch.Tensor], str]:
    """3×H×W float images in [0, 1] at their own sizes, and what they are ("scikit-image photos"
    or "synthetic images")."""
    photos = scikit_image_photos()
    if photos is None:
        return [smooth_image(*SYNTHETIC_SIZE, seed + 1 + i) for i in range(len(PHOTOS))], "synthetic images"
    images = [torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).float() / 255 for a in photos.values()]
    return images, "scikit-image photos"


def scikit_image_photos() -> "dict | None":
    """``PHOTOS`` as H×W×3 uint8 arrays by name (None without scikit-image)."""
    try:
        import skimage.data  # optional: scikit-image (the test and examples extras)
    except ImportError:
        return None
    arrays = {}
    for name in PHOTOS:
        array = np.asarray(getattr(skimage.data, name)())
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        arrays[name] = np.ascontiguousarray(array[..., :3])
    return arrays


def calibration_photos(seed: int = 0) -> Tuple[List[Tuple[str, Image.Image]], str]:
    """``calibration_images`` as named RGB PIL images (what a serving task's ``prepare`` takes), and what they are."""
    photos = scikit_image_photos()
    if photos is None:
        images = [smooth_image(*SYNTHETIC_SIZE, seed + 1 + i) for i in range(len(PHOTOS))]
        return [(f"synthetic-{i}", Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)))
                for i, image in enumerate(images)], "synthetic images"
    return [(name, Image.fromarray(array)) for name, array in photos.items()], "scikit-image photos"


def recompute_batchnorm(module: nn.Module, seed: int, shape: Tuple[int, int, int, int], steps: int) -> bool:
    """Give random weights usable activation scales: BatchNorm running statistics recomputed from
    ``steps`` batches of seeded noise of ``shape`` (N, 3, H, W); ``module`` is left in eval mode.

    Freshly initialised networks shrink activations layer by layer (logits near 1e-10), so the
    ranking of outputs is numerical noise; with recomputed statistics the weights stay random but
    the outputs are well conditioned. It teaches the model nothing. False if there is no BatchNorm.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return False
    generator = torch.Generator().manual_seed(seed)
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over all the batches
    module.train()
    with torch.no_grad():
        for _ in range(steps):
            module(torch.randn(*shape, generator=generator))
    module.eval()
    return True
