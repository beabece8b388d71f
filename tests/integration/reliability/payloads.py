"""Byte-level payloads for the bad-input corpus: valid samples and their corruptions.

Everything is built from the demo data set's generator, so the corpus file stays small text.
`MARK` is put into every payload that can carry text, so that the logs can be searched for it.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import PngImagePlugin

from smoothexplain.demo import render_sample

__all__ = ["MARK", "image_bytes", "sample_png", "tensor_json"]

MARK = "ZQXBODYMARK7741"  # never a substring of anything the server writes by itself

_DTYPES = {
    "DTYPE_FLOAT32": "<f4",
    "DTYPE_FLOAT16": "<f2",
    "DTYPE_FLOAT64": "<f8",
    "DTYPE_UINT8": "u1",
}


def sample_png(label: int = 1, seed: int = 1, size: int = 64) -> bytes:
    """A valid demo image carrying MARK in a text chunk."""
    image, _ = render_sample(label, seed, size)
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", MARK)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def _save(image_format: str, size: int = 16) -> bytes:
    image, _ = render_sample(2, 3, size)
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def declared_png(width: int, height: int, idat_rows: int = 1) -> bytes:
    """A PNG whose header declares width × height but whose pixel data is a few rows at most
    (a decompression bomb's shape without its size)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = min(idat_rows, height)
    raw = zlib.compress(b"".join(b"\x00" + b"\x00" * min(3 * width, 4096) for _ in range(rows)))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"tEXt", b"comment\x00" + MARK.encode())
        + _chunk(b"IDAT", raw)
        + _chunk(b"IEND", b"")
    )


def declared_jpeg(width: int, height: int) -> bytes:
    """A small valid JPEG with its frame header rewritten to declare width × height."""
    data = bytearray(_save("JPEG"))
    sof = data.find(b"\xff\xc0")
    if sof < 0:
        raise ValueError("no baseline SOF0 marker in the sample JPEG")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _mutate(data: bytes, recipe: Mapping[str, Any]) -> bytes:
    if "truncate" in recipe:
        data = data[: int(recipe["truncate"])]
    if "flip" in recipe:  # invert bytes from an offset (negative: from the end)
        start = int(recipe["flip"]) % len(data)
        count = int(recipe.get("flip_count", 16))
        tail = bytes(b ^ 0xFF for b in data[start : start + count])
        data = data[:start] + tail + data[start + count :]
    if "append" in recipe:
        data += str(recipe["append"]).replace("$MARK", MARK).encode()
    return data


def image_bytes(recipe: Mapping[str, Any]) -> bytes:
    """Bytes of an image recipe: {kind: png|jpeg|gif|bmp|tiff|webp|ico|declared_png|...}."""
    kind = str(recipe.get("kind", "png"))
    if kind == "png":
        data = sample_png(int(recipe.get("label", 1)), int(recipe.get("seed", 1)))
    elif kind == "declared_png":
        width, height = recipe["declare"]
        data = declared_png(int(width), int(height), int(recipe.get("rows", 1)))
    elif kind == "declared_jpeg":
        width, height = recipe["declare"]
        data = declared_jpeg(int(width), int(height))
    elif kind == "text":
        data = str(recipe["text"]).replace("$MARK", MARK).encode()
    else:
        data = _save(kind.upper())
    return _mutate(data, recipe)


def tensor_json(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A Tensor message in proto3 JSON from {shape, dtype, fill, data_bytes, ...}."""
    shape = [int(s) for s in spec.get("shape", [3, 64, 64])]
    dtype = str(spec.get("dtype", "DTYPE_FLOAT32"))
    out: dict[str, Any] = {"shape": shape}
    if spec.get("dtype_number") is not None:
        out["dtype"] = int(spec["dtype_number"])
    elif dtype != "DTYPE_UNSPECIFIED":
        out["dtype"] = dtype
    np_dtype = np.dtype(_DTYPES.get(dtype, "<f4"))
    if "data_bytes" in spec:  # an explicit byte count (wrong on purpose), MARK repeated
        count = int(spec["data_bytes"])
        data = (MARK.encode() * (count // len(MARK) + 1))[:count]
    else:
        elements = int(np.prod(shape)) if shape and min(shape) > 0 else 0
        values = np.linspace(-1.0, 1.0, elements, dtype=np.float64) if elements else np.zeros(0)
        fill = spec.get("fill")
        if fill is not None and elements:
            values[elements // 2] = float(fill)  # one bad value in the middle
        with np.errstate(over="ignore"):  # an overflow to Inf is the point of some cases
            data = values.astype(np_dtype).tobytes()
    out["data"] = base64.b64encode(data).decode()
    return out
