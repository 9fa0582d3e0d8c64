"""The benchmark photo: scikit-image's astronaut as a 1280×720 JPEG, made the same way every run."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def make_photo(width: int = 1280, height: int = 720, quality: int = 90) -> bytes:
    """A real photo at ``width``×``height`` (scaled up from 512×512, centre-cropped), as JPEG."""
    import skimage.data

    side = max(width, height)
    image = Image.fromarray(np.asarray(skimage.data.astronaut())).convert("RGB").resize((side, side), Image.LANCZOS)
    left, top = (side - width) // 2, (side - height) // 2
    buffer = io.BytesIO()
    image.crop((left, top, left + width, top + height)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
