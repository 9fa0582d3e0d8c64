"""Image -> model input, and model coordinates -> original-image coordinates.

Images of any size become the same square input so a whole batch runs in one forward pass
(``fit_square``), or, for segmentation's ``shorter_side``, keep their aspect ratio as
torchvision's preset does (``resize_shorter_side``: one forward pass per shape).
``Placement`` remembers where the original image sits in that input, so boxes and masks
can be mapped back to the pixels of the image the client sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

RESAMPLE = Image.BILINEAR
# settings.INTERPOLATIONS -> PIL's (antialiased) filters
FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
Resizer = Callable[[Image.Image, Tuple[int, int]], np.ndarray]


@dataclass(frozen=True)
class Placement:
    """The original ``width``×``height`` image occupies ``content_width``×``content_height``
    pixels of a square model input of side ``input_size``, starting ``offset_x``/``offset_y``
    pixels from its top-left corner (0 except for ``letterbox_center``). ``input_shape``
    (height, width) is the input's own shape when it is not that square (``shorter_side``)."""

    width: int
    height: int
    content_width: int
    content_height: int
    input_size: int
    offset_x: int = 0
    offset_y: int = 0
    input_shape: Optional[Tuple[int, int]] = None

    @property
    def input_height(self) -> int:
        return self.input_shape[0] if self.input_shape else self.input_size

    @property
    def input_width(self) -> int:
        return self.input_shape[1] if self.input_shape else self.input_size

    def boxes_to_original(self, boxes: np.ndarray) -> np.ndarray:
        """Map N×4 ``x1, y1, x2, y2`` boxes from model-input pixels to original pixels, clipped."""
        scale = np.array([self.width / self.content_width, self.height / self.content_height] * 2, dtype=np.float32)
        offset = np.array([self.offset_x, self.offset_y] * 2, dtype=np.float32)
        mapped = (boxes.astype(np.float32) - offset) * scale
        np.clip(mapped[:, 0::2], 0, self.width, out=mapped[:, 0::2])
        np.clip(mapped[:, 1::2], 0, self.height, out=mapped[:, 1::2])
        return mapped

    def points_to_original(self, points: np.ndarray) -> np.ndarray:
        """Map ``…×2`` (or more) ``x, y`` points from model-input pixels to original pixels, clipped
        (ultralytics' ``scale_coords``); further columns (scores) are kept as they are."""
        mapped = np.array(points, dtype=np.float32)
        mapped[..., 0] = np.clip((mapped[..., 0] - self.offset_x) * np.float32(self.width / self.content_width),
                                 0, self.width)
        mapped[..., 1] = np.clip((mapped[..., 1] - self.offset_y) * np.float32(self.height / self.content_height),
                                 0, self.height)
        return mapped


def resize_antialiased(image: Image.Image, size: Tuple[int, int], resample: int = RESAMPLE) -> np.ndarray:
    """``image`` at ``size`` (width, height) with PIL's bilinear (or ``resample``) filter, which
    antialiases when shrinking: how torchvision's weights were trained (``transforms.Resize(antialias=True)``)."""
    return np.asarray(image.resize(size, resample))


def resize_like_ultralytics(image: Image.Image, size: Tuple[int, int]) -> np.ndarray:
    """``image`` at ``size`` (width, height) as ultralytics' ``LetterBox`` resizes: OpenCV's
    ``cv2.resize(..., INTER_LINEAR)``, no antialiasing, skipped when the size is already right.
    OpenCV works per channel, so RGB gives the same pixels as ultralytics' BGR."""
    import cv2  # only this family needs OpenCV (opencv-python-headless)

    array = np.asarray(image)
    if image.size == tuple(size):
        return array
    return cv2.resize(array, tuple(size), interpolation=cv2.INTER_LINEAR)


def _linear_taps(source: int, target: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of ``target`` output positions: its two source positions and the second one's
    weight, as PyTorch's ``upsample_bilinear2d`` computes them (``align_corners=False``, float32)."""
    scale = np.float64(np.float32(source) / np.float32(target))
    # scale * (i + 0.5) - 0.5 rounded once to float32, as PyTorch's compiled (fused multiply-add) kernel does
    position = np.maximum(((np.arange(target) + 0.5) * scale - 0.5).astype(np.float32), np.float32(0))
    first = position.astype(np.int64)  # floor: position >= 0
    return first, np.minimum(first + 1, source - 1), np.minimum(position - first.astype(np.float32), np.float32(1))


def resize_bilinear_float(image: Image.Image, size: Tuple[int, int]) -> np.ndarray:
    """``image`` at ``size`` (width, height) as a float32 array (0-255, not rounded): bilinear without
    antialiasing, equal to ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``,
    which torchvision's detectors apply inside (``GeneralizedRCNNTransform``; SSD/SSDlite)."""
    array = np.asarray(image)
    if image.size == tuple(size):
        return array  # the same values; normalize() takes uint8 and float alike
    (top, bottom, down), (left, right, across) = _linear_taps(image.height, size[1]), _linear_taps(image.width, size[0])
    down, across = down[:, None, None], across[:, None]  # weights by output row, by output column
    upper, lower = array.take(top, axis=0), array.take(bottom, axis=0)  # uint8: only the rows that are read
    upper = upper.take(left, axis=1) * (1 - across) + upper.take(right, axis=1) * across
    lower = lower.take(left, axis=1) * (1 - across) + lower.take(right, axis=1) * across
    return upper * (1 - down) + lower * down


# Each family resizes as its models were trained (docs/models.md, "How images are resized"): the
# ``interpolation`` setting picks the filter of ``stretch`` and ``letterbox``; ``letterbox_center``
# (the YOLO formats) always resizes as ultralytics does.
RESIZERS: Dict[str, Resizer] = {
    "bilinear": resize_antialiased, "bicubic": lambda image, size: resize_antialiased(image, size, Image.BICUBIC),
    "bilinear_float": resize_bilinear_float}
MODE_RESIZERS: Dict[str, Resizer] = {"letterbox_center": resize_like_ultralytics}


def resizer(mode: str, interpolation: str = "bilinear") -> Resizer:
    """The resize of ``resize_mode`` ``mode`` with the ``interpolation`` setting."""
    return MODE_RESIZERS.get(mode) or RESIZERS[interpolation]


def check_resizer(mode: str) -> None:
    """Fail now, with what to install, if ``mode``'s resize needs a package this host lacks
    (a worker should refuse to load rather than fail every request)."""
    if MODE_RESIZERS.get(mode) is resize_like_ultralytics:
        try:
            import cv2  # noqa: F401
        except ImportError as error:
            raise ImportError(f"resize_mode {mode!r} (the YOLO formats) resizes with OpenCV, as ultralytics does; "
                              f"install it on this host: pip install opencv-python-headless ({error})") from None


def fit_square(image: Image.Image, size: int, mode: str, fill: Sequence[int],
               interpolation: str = "bilinear") -> Tuple[np.ndarray, Placement]:
    """Resize ``image`` into a ``size``×``size`` array (uint8; float32 for ``bilinear_float``).

    ``stretch`` scales each axis to ``size`` (what SSD-style detectors are trained on);
    ``letterbox`` keeps the aspect ratio and pads the right/bottom with ``fill``;
    ``letterbox_center`` keeps it and centres the image, padding both sides (ultralytics'
    ``LetterBox(auto=False)``: offsets ``round(pad / 2 - 0.1)``; YOLO models use grey 114).
    ``interpolation`` picks the filter of ``stretch`` and ``letterbox`` (``resizer``).
    """
    width, height = image.size
    if mode == "stretch":
        content_w = content_h = size
    else:
        scale = size / max(width, height)
        content_w, content_h = max(1, round(width * scale)), max(1, round(height * scale))
    left = top = 0
    if mode == "letterbox_center":
        left, top = round((size - content_w) / 2 - 0.1), round((size - content_h) / 2 - 0.1)
    resized = resizer(mode, interpolation)(image, (content_w, content_h))
    if (content_w, content_h) == (size, size):
        array = resized
    else:
        array = np.empty((size, size, 3), dtype=resized.dtype)
        array[...] = np.asarray(fill, dtype=np.uint8)
        array[top:top + content_h, left:left + content_w] = resized
    return array, Placement(width, height, content_w, content_h, size, left, top)


def resize_shorter_side(image: Image.Image, size: int, max_size: Optional[int] = None,
                        interpolation: str = "bilinear") -> Tuple[np.ndarray, Placement]:
    """torchvision's segmentation preset (``SemanticSegmentation``: ``Resize(size)`` of a PIL image):
    the shorter side to ``size``, the longer one in proportion (truncated), no crop, no padding,
    with the ``interpolation`` filter (``resizer``; the preset's is PIL's antialiased bilinear). The
    longer side is capped at ``max_size`` (None: ``2 * size``) with ``Resize(size, max_size=...)``'s
    arithmetic; the preset itself has no cap."""
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_short, new_long = size, int(size * long / short)
    cap = max_size or 2 * size
    if new_long > cap:
        new_short, new_long = max(1, int(cap * new_short / new_long)), cap
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    array = resizer("shorter_side", interpolation)(image, (new_w, new_h))
    return array, Placement(width, height, new_w, new_h, size, input_shape=(new_h, new_w))


def resize_center_crop(image: Image.Image, resize_size: int, crop_size: int,
                       interpolation: str = "bilinear") -> np.ndarray:
    """torchvision's classification preset: shorter side to ``resize_size`` (PIL's ``interpolation``
    filter, as torchvision resizes a PIL image), centre crop.

    Sizes and offsets follow torchvision's arithmetic (long side truncated, offsets rounded),
    but only the region that survives the crop is resized: same pixels, less work.
    """
    box = center_crop_box(image.size, resize_size, crop_size)
    return np.asarray(image.resize((crop_size, crop_size), FILTERS[interpolation], box=box))


def center_crop_box(image_size: Tuple[int, int], resize_size: int, crop_size: int) -> Tuple[float, float, float, float]:
    """(x1, y1, x2, y2) in original pixels of what ``resize_center_crop`` keeps (the model's view)."""
    width, height = image_size
    if width <= height:
        new_w, new_h = resize_size, int(resize_size * height / width)
    else:
        new_w, new_h = int(resize_size * width / height), resize_size
    scale_x, scale_y = new_w / width, new_h / height
    left, top = int(round((new_w - crop_size) / 2.0)), int(round((new_h - crop_size) / 2.0))
    return left / scale_x, top / scale_y, (left + crop_size) / scale_x, (top + crop_size) / scale_y


def normalize(batch: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """N×H×W×3 uint8 -> N×3×H×W float32, ``(x / 255 - mean) / std``."""
    scale = (1.0 / (255.0 * np.asarray(std, dtype=np.float32)))
    offset = np.asarray(mean, dtype=np.float32) / np.asarray(std, dtype=np.float32)
    # The bytes are put in N×3×H×W order first (one byte per value moved), then converted in one
    # contiguous pass; the same float32 operations as before, 3-4× faster (docs/performance.md).
    chw = np.ascontiguousarray(batch.transpose(0, 3, 1, 2)).astype(np.float32)
    chw *= scale[None, :, None, None]
    chw -= offset[None, :, None, None]
    return chw


YOLO_FILL = (114, 114, 114)  # ultralytics' letterbox grey


def mean_fill(mean: Sequence[float]) -> Tuple[int, int, int]:
    """The uint8 colour that normalises to (about) zero: padding that looks like 'nothing'."""
    return tuple(int(round(m * 255)) for m in mean)
