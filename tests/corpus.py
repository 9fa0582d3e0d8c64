"""A corpus of odd and malformed inputs, generated (no binary files in the repository).

Each case is one request: a body, its content type, and the status it must get.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes
    content_type: str
    status: int
    kind: Optional[str] = None  # the error "type" for a 4xx

    @property
    def row(self) -> dict:
        """The row TorchServe's worker would hand the handler (JSON and text already decoded)."""
        value: object = self.body
        if self.content_type == "application/json":
            try:
                value = json.loads(self.body)
            except ValueError:
                pass
        elif self.content_type.startswith("text/"):
            value = self.body.decode("utf-8")
        return {"body": value}

    @property
    def headers(self) -> dict:
        return {"body": {"content-type": self.content_type}}


def photo(width: int = 320, height: int = 240, seed: int = 0) -> Image.Image:
    """A smooth colourful picture (gradients and a disc), different for each seed."""
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    a, b, c = rng.uniform(0.5, 3, size=3)
    pixels = np.stack([(np.sin(x / width * a * 3) + 1) * 127, (np.cos(y / height * b * 3) + 1) * 127,
                       ((x + y) % int(40 * c + 10)) * 255 / (40 * c + 10)], axis=-1)
    disc = (x - width * 0.6) ** 2 + (y - height * 0.4) ** 2 < (min(width, height) * 0.2) ** 2
    pixels[disc] = (250, 240, 20)
    return Image.fromarray(pixels.astype(np.uint8))


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A PNG header that claims ``width``×``height`` pixels (a decompression-bomb shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
            + chunk(b"IEND", b""))


def gif_declaring(width: int, height: int) -> bytes:
    data = bytearray(encode(Image.new("P", (2, 2)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def with_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", exif=exif.tobytes(), quality=92)


def animated_gif() -> bytes:
    frames = [photo(160, 120, seed).convert("P") for seed in range(3)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def sixteen_bit_png() -> bytes:
    ramp = (np.linspace(0, 65535, 200 * 100).reshape(100, 200)).astype(np.uint16)
    return encode(Image.fromarray(ramp), "PNG")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def build_corpus() -> List[Case]:
    picture = photo()
    jpeg = encode(picture, "JPEG", quality=90)
    ok = [
        Case("baseline JPEG", jpeg, "image/jpeg", 200),
        Case("progressive JPEG", encode(picture, "JPEG", progressive=True, quality=85), "image/jpeg", 200),
        Case("CMYK JPEG", encode(picture.convert("CMYK"), "JPEG"), "image/jpeg", 200),
        Case("PNG RGB", encode(photo(seed=1), "PNG"), "image/png", 200),
        Case("PNG 16-bit grey", sixteen_bit_png(), "image/png", 200),
        Case("PNG grey", encode(picture.convert("L"), "PNG"), "image/png", 200),
        Case("PNG palette", encode(picture.convert("P", palette=Image.ADAPTIVE), "PNG"), "image/png", 200),
        Case("PNG RGBA", encode(photo(seed=2).convert("RGBA"), "PNG"), "image/png", 200),
        Case("PNG grey+alpha", encode(picture.convert("LA"), "PNG"), "image/png", 200),
        Case("PNG 1-bit", encode(picture.convert("1"), "PNG"), "image/png", 200),
        Case("WebP", encode(photo(seed=3), "WEBP", quality=80), "image/webp", 200),
        Case("BMP", encode(photo(seed=4), "BMP"), "image/bmp", 200),
        Case("animated GIF", animated_gif(), "image/gif", 200),
        Case("TIFF", encode(photo(seed=5), "TIFF"), "image/tiff", 200),
        Case("EXIF-rotated JPEG", with_orientation(photo(seed=6), 6), "image/jpeg", 200),
        Case("1x1 image", encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), "image/png", 200),
        Case("10000x10 strip", encode(photo(10000, 10, seed=7), "PNG"), "image/png", 200),
        Case("octet-stream JPEG", encode(photo(seed=8), "JPEG"), "application/octet-stream", 200),
        Case("base64 JSON", json.dumps({"data": b64(encode(photo(seed=9), "JPEG"))}).encode(), "application/json", 200),
        Case("data URL as text", ("data:image/png;base64," + b64(encode(photo(seed=10), "PNG"))).encode(),
             "text/plain", 200),
        Case("URL-safe base64 JSON",
             json.dumps({"image": base64.urlsafe_b64encode(encode(photo(seed=11), "JPEG")).decode()
                         .rstrip("=")}).encode(),
             "application/json", 200),
    ]
    bad = [
        Case("zero bytes", b"", "application/octet-stream", 400, "EmptyInput"),
        Case("random bytes", np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
             "application/octet-stream", 400, "UnreadableImage"),
        Case("truncated JPEG", jpeg[: len(jpeg) // 2], "image/jpeg", 400, "UnreadableImage"),
        Case("text file as image", b"just some notes, not a picture\n" * 20, "image/png", 400, "UnreadableImage"),
        Case("HTML page", b"<!doctype html><html><body><img src=x></body></html>", "text/html", 415,
             "UnsupportedMediaType"),
        Case("PDF content type", b"%PDF-1.4\n%...", "application/pdf", 415, "UnsupportedMediaType"),
        Case("PNG declaring 100000x100000", png_declaring(100_000, 100_000), "image/png", 413, "ImageTooLarge"),
        Case("GIF declaring 60000x60000", gif_declaring(60_000, 60_000), "image/gif", 413, "ImageTooLarge"),
        Case("real 48-megapixel JPEG", encode(Image.new("RGB", (8000, 6000), (90, 120, 200)), "JPEG", quality=50),
             "image/jpeg", 413, "ImageTooLarge"),
        Case("PNG with corrupt pixel data", encode(photo(seed=12), "PNG")[:60] + b"\x00" * 200, "image/png", 400,
             "UnreadableImage"),
        Case("bad base64", json.dumps({"data": "this is *not* base64!"}).encode(), "application/json", 400,
             "BadBase64"),
        Case("JSON without image field", json.dumps({"picture": b64(jpeg)}).encode(), "application/json", 400,
             "MissingImage"),
        Case("malformed JSON", b'{"data": "abc', "application/json", 400, "BadJson"),
        Case("JSON number as image", json.dumps({"data": 42}).encode(), "application/json", 400, "BadJson"),
        Case("empty instances", json.dumps({"instances": []}).encode(), "application/json", 400, "MissingImage"),
    ]
    return ok + bad
