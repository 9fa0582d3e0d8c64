"""Deterministic mutations of valid images, for the decoding fuzz tests (issue 12).

For each accepted format a valid file is generated with PIL from a synthetic picture (no binary
files in the repository), its structure is parsed (JPEG markers, PNG chunks, RIFF chunks, GIF
blocks, TIFF IFDs, the BMP header), and the file is mutated: truncated at every structural
boundary and at random points, bytes flipped, bytes inserted, length fields rewritten and
width/height fields inflated. The same seed always gives the same cases.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

from tests.corpus import encode, photo

SIZE = (160, 120)  # 19,200 pixels: under the tests' 100,000-pixel limit, and fast to decode
KINDS = ("truncate-boundary", "truncate-random", "flip", "insert", "length", "dimensions")
FORMATS: Dict[str, Tuple[str, str, dict]] = {  # name: (PIL format, content type, save options)
    "JPEG baseline": ("JPEG", "image/jpeg", {"quality": 90}),
    "JPEG progressive": ("JPEG", "image/jpeg", {"quality": 85, "progressive": True}),
    "PNG": ("PNG", "image/png", {}),
    "WebP": ("WEBP", "image/webp", {"quality": 80}),
    "BMP": ("BMP", "image/bmp", {}),
    "GIF": ("GIF", "image/gif", {}),
    "TIFF": ("TIFF", "image/tiff", {}),
}


@dataclass(frozen=True)
class FuzzCase:
    fmt: str           # a key of FORMATS
    kind: str          # one of KINDS
    name: str
    data: bytes

    @property
    def content_type(self) -> str:
        return FORMATS[self.fmt][1]


@dataclass(frozen=True)
class Field:
    """A fixed-width integer in the file: its offset, width in bytes and byte order."""
    offset: int
    width: int
    order: str = ">"   # ">" big-endian, "<" little-endian
    note: str = ""

    @property
    def maximum(self) -> int:
        return (1 << (8 * self.width)) - 1

    def read(self, data: bytes) -> int:
        return int.from_bytes(data[self.offset:self.offset + self.width], "big" if self.order == ">" else "little")

    def write(self, data: bytes, value: int) -> bytes:
        raw = (value & self.maximum).to_bytes(self.width, "big" if self.order == ">" else "little")
        return data[:self.offset] + raw + data[self.offset + self.width:]


@dataclass
class Layout:
    """What the mutations need to know about one file."""
    boundaries: List[int] = field(default_factory=list)                 # offsets where a structure starts
    lengths: List[Field] = field(default_factory=list)                  # length, count and offset fields
    dimensions: List[Tuple[Field, Field]] = field(default_factory=list)  # (width, height) field pairs
    header_end: int = 0                                                  # where the pixel data begins


def valid_file(fmt: str, seed: int = 0) -> bytes:
    """The valid file every mutation of ``fmt`` starts from."""
    pil_format, _, options = FORMATS[fmt]
    return encode(photo(*SIZE, seed=seed), pil_format, **options)


# ---------------------------------------------------------------- parsers, one per format

def jpeg_layout(data: bytes) -> Layout:
    layout = Layout(boundaries=[2])
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xD9:  # EOI
            layout.boundaries.append(pos)
            break
        layout.boundaries += [pos, pos + 2, pos + 4]  # marker, length, payload
        length = Field(pos + 2, 2, ">", f"{marker:02X} length")
        layout.lengths.append(length)
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn: height, then width
            layout.dimensions.append((Field(pos + 7, 2, ">", "SOF width"), Field(pos + 5, 2, ">", "SOF height")))
        pos += 2 + length.read(data)
        if marker == 0xDA:  # SOS: entropy-coded data runs to the next marker that is not RSTn
            layout.header_end = layout.header_end or pos
            while pos + 1 < len(data) and not (data[pos] == 0xFF and data[pos + 1] not in (0x00, *range(0xD0, 0xD8))):
                pos += 1
            layout.boundaries.append(pos - 1)  # inside the last byte of the scan
    return layout


def png_layout(data: bytes) -> Layout:
    layout = Layout(boundaries=[8])
    pos = 8
    while pos + 8 <= len(data):
        length = Field(pos, 4, ">", data[pos + 4:pos + 8].decode("latin-1") + " length")
        layout.boundaries += [pos, pos + 4, pos + 8]
        layout.lengths.append(length)
        if data[pos + 4:pos + 8] == b"IHDR":
            layout.dimensions.append((Field(pos + 8, 4, ">", "IHDR width"), Field(pos + 12, 4, ">", "IHDR height")))
        if data[pos + 4:pos + 8] == b"IDAT" and not layout.header_end:
            layout.header_end = pos
        end = pos + 12 + length.read(data)
        layout.boundaries.append(end - 4)  # the CRC
        pos = end
    return layout


def webp_layout(data: bytes) -> Layout:
    layout = Layout(boundaries=[4, 8, 12], lengths=[Field(4, 4, "<", "RIFF size")])
    pos = 12
    while pos + 8 <= len(data):
        kind = data[pos:pos + 4]
        size = Field(pos + 4, 4, "<", kind.decode("latin-1") + " size")
        layout.boundaries += [pos, pos + 4, pos + 8]
        layout.lengths.append(size)
        body = pos + 8
        if kind == b"VP8 ":  # frame tag (3), start code (3), 14-bit width and height
            layout.boundaries += [body + 3, body + 6, body + 10]
            layout.dimensions.append((Field(body + 6, 2, "<", "VP8 width"), Field(body + 8, 2, "<", "VP8 height")))
            layout.lengths.append(Field(body, 3, "<", "VP8 first partition size"))
        elif kind == b"VP8X":  # 24-bit canvas width-1 and height-1
            layout.dimensions.append((Field(body + 4, 3, "<", "VP8X width"), Field(body + 7, 3, "<", "VP8X height")))
        layout.header_end = layout.header_end or body + 10
        pos = body + size.read(data) + (size.read(data) & 1)
    return layout


def bmp_layout(data: bytes) -> Layout:
    offsets = [2, 6, 10, 14, 18, 22, 26, 28, 30, 34, 38, 42, 46, 50]
    return Layout(
        boundaries=offsets + [54],
        lengths=[Field(2, 4, "<", "file size"), Field(10, 4, "<", "pixel offset"), Field(14, 4, "<", "DIB header size"),
                 Field(28, 2, "<", "bits per pixel"), Field(34, 4, "<", "image size"),
                 Field(46, 4, "<", "colours used")],
        dimensions=[(Field(18, 4, "<", "width"), Field(22, 4, "<", "height"))],
        header_end=Field(10, 4, "<").read(data),
    )


def gif_layout(data: bytes) -> Layout:
    layout = Layout(boundaries=[6, 10, 13],
                    dimensions=[(Field(6, 2, "<", "screen width"), Field(8, 2, "<", "screen height"))])
    pos = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    while pos < len(data):
        layout.boundaries.append(pos)
        block = data[pos]
        if block == 0x3B:  # trailer
            break
        if block == 0x21:  # extension: label, then sub-blocks
            pos += 2
        elif block == 0x2C:  # image descriptor, optional local colour table, LZW code size, sub-blocks
            layout.dimensions.append((Field(pos + 5, 2, "<", "frame width"), Field(pos + 7, 2, "<", "frame height")))
            layout.boundaries += [pos + 1, pos + 5, pos + 9]
            flags = data[pos + 9]
            pos += 10 + ((3 << ((flags & 7) + 1)) if flags & 0x80 else 0)
            layout.lengths.append(Field(pos, 1, "<", "LZW code size"))
            layout.header_end = layout.header_end or pos
            pos += 1
        else:
            break
        for count in range(10_000):  # sub-blocks: a size byte, then that many bytes; 0 ends them
            if pos >= len(data):
                break
            if count < 4 or data[pos] == 0:
                layout.boundaries.append(pos)
                layout.lengths.append(Field(pos, 1, "<", f"sub-block {count} size"))
            if data[pos] == 0:
                pos += 1
                break
            pos += 1 + data[pos]
    return layout


TIFF_TYPES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8}  # type -> bytes per value


def tiff_layout(data: bytes) -> Layout:
    order = "<" if data[:2] == b"II" else ">"
    first_ifd = Field(4, 4, order, "first IFD offset")
    layout = Layout(boundaries=[2, 4, 8], lengths=[first_ifd])
    ifd = first_ifd.read(data)
    count = Field(ifd, 2, order, "IFD entry count")
    layout.lengths.append(count)
    layout.boundaries.append(ifd)
    widths: Dict[int, Field] = {}
    data_starts = []
    for index in range(count.read(data)):
        entry = ifd + 2 + 12 * index
        layout.boundaries.append(entry)
        tag = Field(entry, 2, order).read(data)
        kind = Field(entry + 2, 2, order).read(data)
        values = Field(entry + 4, 4, order, f"tag {tag} count")
        layout.lengths.append(values)
        size = TIFF_TYPES.get(kind, 1)
        value = Field(entry + 8, size if size * values.read(data) <= 4 else 4, order, f"tag {tag} value")
        if size * values.read(data) > 4:  # out of line: the field is an offset
            layout.lengths.append(value)
            layout.boundaries.append(value.read(data))
        elif tag in (273, 279):  # StripOffsets, StripByteCounts (one strip)
            layout.lengths.append(value)
            if tag == 273:
                data_starts.append(value.read(data))
        if tag in (256, 257):
            widths[tag] = value
    layout.boundaries += [ifd + 2 + 12 * count.read(data), ifd + 6 + 12 * count.read(data)]
    layout.lengths.append(Field(ifd + 2 + 12 * count.read(data), 4, order, "next IFD offset"))
    layout.dimensions.append((widths[256], widths[257]))
    layout.header_end = min(data_starts or [len(data)])
    layout.boundaries += data_starts
    return layout


PARSERS = {"JPEG": jpeg_layout, "PNG": png_layout, "WEBP": webp_layout, "BMP": bmp_layout, "GIF": gif_layout,
           "TIFF": tiff_layout}


def layout_of(fmt: str, data: bytes) -> Layout:
    return PARSERS[FORMATS[fmt][0]](data)


# ---------------------------------------------------------------- mutations

def fix_png_crcs(data: bytes) -> bytes:
    """Recompute every PNG chunk's CRC, so a rewritten IHDR is read as the header it claims."""
    out, pos = bytearray(data[:8]), 8
    while pos + 12 <= len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        chunk = data[pos + 4:pos + 8 + length]
        out += data[pos:pos + 8 + length] + struct.pack(">I", zlib.crc32(chunk))
        pos += 12 + length
    return bytes(out + data[pos:])


def inflate(fmt: str, data: bytes, width: Field, height: Field, size: Tuple[int, int]) -> bytes:
    """``data`` with its width/height fields rewritten to ``size`` (clipped to the fields' widths)."""
    w, h = size
    if width.note.startswith("VP8 "):  # 14 bits of size, 2 bits of scale
        w, h = min(w, 0x3FFF), min(h, 0x3FFF)
    if width.note.startswith("VP8X"):  # stored minus one
        w, h = w - 1, h - 1
    data = height.write(width.write(data, min(w, width.maximum)), min(h, height.maximum))
    return fix_png_crcs(data) if FORMATS[fmt][0] == "PNG" else data


def mutations(fmt: str, data: bytes, rng: np.random.Generator, randoms: int = 24) -> List[FuzzCase]:
    """Every mutation of one valid file of ``fmt``."""
    layout = layout_of(fmt, data)
    cases: List[FuzzCase] = []

    def add(kind: str, name: str, mutated: bytes) -> None:
        if mutated and mutated != data:
            cases.append(FuzzCase(fmt, kind, f"{fmt} {kind} {name}", mutated))

    for cut in sorted({b for b in layout.boundaries if 0 < b < len(data)}):
        add("truncate-boundary", f"at {cut}", data[:cut])
    header = max(layout.header_end, 16)
    for cut in sorted({int(x) for x in rng.integers(1, header, randoms // 2)}
                      | {int(x) for x in rng.integers(header, len(data), randoms // 2)}):
        add("truncate-random", f"at {cut}", data[:cut])
    for index in range(randoms * 2):  # half in the header, half anywhere
        pos = int(rng.integers(0, header if index % 2 == 0 else len(data)))
        flipped = bytearray(data)
        flipped[pos] ^= int(rng.integers(1, 256))
        add("flip", f"{index} at {pos}", bytes(flipped))
    for index in range(randoms):  # at a boundary or in the header, 1-16 random bytes
        spots = sorted(set(layout.boundaries))
        pos = spots[int(rng.integers(len(spots)))] if index % 2 == 0 else int(rng.integers(0, header))
        extra = rng.integers(0, 256, int(rng.integers(1, 17)), dtype=np.uint8).tobytes()
        add("insert", f"{index} at {pos}", data[:pos] + extra + data[pos:])
    for length in layout.lengths:
        value = length.read(data)
        for wrong in sorted({0, 1, value - 1, value + 1, value * 2 + 7, length.maximum, length.maximum >> 1}
                            - {value, -1}):
            add("length", f"{length.note} at {length.offset}: {value}->{wrong}", length.write(data, wrong))
    w0, h0 = SIZE
    for width, height in layout.dimensions:
        for size in [(w0, 60_000), (60_000, h0), (400, 300), (1000, 1000), (65_535, 65_535), (0x7FFFFFFF, 3),
                     (w0 + 1, h0 + 1), (0, h0)]:
            add("dimensions", f"{width.note}/{height.note} {size[0]}x{size[1]}",
                inflate(fmt, data, width, height, size))
    return cases


def build_fuzz_cases(randoms: int = 24) -> List[FuzzCase]:
    """All the cases of all the formats, in a fixed order."""
    cases: List[FuzzCase] = []
    for fmt in FORMATS:
        rng = np.random.default_rng(zlib.crc32(fmt.encode()))
        cases += mutations(fmt, valid_file(fmt), rng, randoms)
    return cases


def truncated_photo_jpeg(length: int = 200) -> bytes:
    """The case of issue 12: the first ``length`` bytes of a real photo's JPEG (inside its header)."""
    import skimage.data

    buffer = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()[:length]
