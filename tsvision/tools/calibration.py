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
    try:
        import skimage.data
    except ImportError:
        return [smooth_image(*SYNTHETIC_SIZE, seed + 1 + i) for i in range(len(PHOTOS))], "synthetic images"
    images = []
    for name in PHOTOS:
        array = np.asarray(getattr(skimage.data, name)())
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        images.append(torch.from_numpy(np.ascontiguousarray(array[..., :3].transpose(2, 0, 1))).float() / 255)
    return images, "scikit-image photos"
