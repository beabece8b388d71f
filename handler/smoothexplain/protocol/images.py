"""Image bytes → an upright PIL image, optionally resized and centre-cropped for a model.

The server (`codec.image_to_tensor`) and the CLI's overlay (`cli._image_like`) both call
`load_image`, so an overlay lines up with the map it is drawn under. Resizing and cropping are
torchvision's own (`Resize(resize)` + `CenterCrop(size)` on a PIL image), not a copy of their
arithmetic, so a model trained with those transforms sees the pixels it was trained on.

Every failure is an `InvalidArgument` naming `field`: an `UnsupportedMediaType` (415) for bytes
that are no PNG, JPEG or WebP, a `LimitExceeded` for too many pixels (decoded or resized) or too
thin a strip, judged from the header before any pixel is decoded, else a 400.
"""

from __future__ import annotations

import io
import re
import struct
import warnings
from dataclasses import dataclass
from typing import NoReturn

import numpy as np
from PIL import ExifTags, Image

from ..protocol.errors import InvalidArgument, LimitExceeded, UnsupportedMediaType

__all__ = ["ACCEPTED", "image_format", "load_image", "resize_crop"]

ACCEPTED = "PNG, JPEG or WebP"  # as error messages name the accepted encodings

# PIL format name → the bytes a file of it starts with. Only these decoders may run: PIL's
# others (EPS, TIFF, ...) parse far more than a photograph needs.
_IMAGE_MAGIC: dict[str, re.Pattern[bytes]] = {
    "PNG": re.compile(rb"\x89PNG\r\n\x1a\n"),
    "JPEG": re.compile(rb"\xff\xd8\xff"),
    "WEBP": re.compile(rb"RIFF.{4}WEBP", re.DOTALL),  # a RIFF container of type WEBP
}
# What each may decode as: a multi-picture JPEG (many phone cameras) opens as PIL's "MPO".
_IMAGE_FORMATS = {"PNG": ("PNG",), "JPEG": ("JPEG", "MPO"), "WEBP": ("WEBP",)}
_NAMES = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP"}
_DETAIL_MAX = 300  # characters of a parser's message quoted in an error
# EXIF Orientation → the transpose that makes the stored pixels upright (1: already upright;
# 6, "rotate 90 clockwise to view", is PIL's counter-clockwise ROTATE_270).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# What reading a malformed EXIF block raises: SyntaxError for a bad header, struct.error for a
# truncated directory (TypeError: an orientation value that is not hashable).
_EXIF_ERRORS = (OSError, SyntaxError, TypeError, ValueError, struct.error)


def image_format(data: bytes) -> str | None:
    """The PIL format name of an accepted image (by its magic bytes), None for anything else."""
    for name, magic in _IMAGE_MAGIC.items():
        if magic.match(data):
            return name
    return None


def load_image(
    data: bytes,
    *,
    mode: str = "RGB",
    crop: tuple[int, int] | None = None,
    max_pixels: int | None = None,
    max_aspect_ratio: float | None = None,
    field: str = "input.image",
) -> Image.Image:
    """Decode a PNG, JPEG or WebP image, turn it upright, convert it to `mode` ("RGB", "L").

    `crop` = (resize, size): then the shorter side is resized to `resize` and the centre
    `size` × `size` cut out, as torchvision's `Resize(resize)` + `CenterCrop(size)`. Images
    above `max_pixels` (width × height), as decoded or as resized, or with a longer side
    above `max_aspect_ratio` times the shorter are refused from the size their header
    declares, before their pixels are decoded.
    """
    kind = image_format(data)
    if kind is None:
        raise UnsupportedMediaType(f"{field} must be {ACCEPTED}", field=field)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            resize = None if crop is None else crop[0]
            limits = _SizeLimits(field, max_pixels, max_aspect_ratio, resize)
            if kind == "WEBP":  # PIL's WebP decoder allocates its canvas when it opens
                _check_webp(data, limits)
            image = Image.open(io.BytesIO(data), formats=(kind,))  # reads the header only
            limits.check(image.size)
            if image.format not in _IMAGE_FORMATS[kind]:
                raise UnsupportedMediaType(f"{field} must be {ACCEPTED}", field=field)
            image.load()
            picture = _upright(_eight_bit(image)).convert(mode)
    except (
        OSError,
        SyntaxError,
        ValueError,
        struct.error,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as error:
        if isinstance(error, InvalidArgument):
            raise
        if isinstance(error, Image.DecompressionBombError | Image.DecompressionBombWarning):
            limit = "" if max_pixels is None else f" (server limit max_pixels={max_pixels})"
            raise LimitExceeded(
                f"{field} is too large{limit}: {_detail(error)}", field=field
            ) from None
        raise InvalidArgument(
            f"{field} cannot be decoded as {_NAMES[kind]}: {_detail(error)}", field=field
        ) from None
    return picture if crop is None else resize_crop(picture, *crop)


def _eight_bit(image: Image.Image) -> Image.Image:
    """16-bit grayscale scaled to 8 bits (PIL's own conversion clips it: all but black white)."""
    if not image.mode.startswith("I"):
        return image
    values = np.asarray(image, dtype=np.float64)
    scaled = np.clip(values, 0, 65535) / 257.0
    return Image.fromarray(scaled.round().astype(np.uint8), mode="L")


def resize_crop(image: Image.Image, resize: int, size: int) -> Image.Image:
    """torchvision's `Resize(resize)` then `CenterCrop(size)` on a PIL image, in PIL alone (so
    the client needs no torch): the shorter side to `resize` (bilinear, PIL's antialiasing),
    then the centre `size` x `size`, a crop larger than the image padded with zeros."""
    width, height = image.size
    short, long = sorted((width, height))
    scaled = (resize, int(resize * long / short))
    target = scaled if width <= height else scaled[::-1]
    resized = image.resize(target, Image.Resampling.BILINEAR)
    return _centre(resized, size)


def _centre(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    if size > width or size > height:  # pad to at least size x size, the extra pixel right/below
        pad_w, pad_h = max(size - width, 0), max(size - height, 0)
        padded = Image.new(image.mode, (width + pad_w, height + pad_h), 0)
        padded.paste(image, (pad_w // 2, pad_h // 2))
        image, (width, height) = padded, padded.size
    top, left = round((height - size) / 2.0), round((width - size) / 2.0)
    return image.crop((left, top, left + size, top + size))


@dataclass(frozen=True)
class _SizeLimits:
    """What the size an image declares may be; checked before any pixel is decoded."""

    field: str
    max_pixels: int | None
    max_aspect_ratio: float | None
    resize: int | None  # its shorter side once resized; None: not resized

    def check(self, size: tuple[int, int]) -> None:
        """Decoded pixels, aspect ratio, resized pixels (the EXIF turn may swap width and
        height, which changes none of them)."""
        width, height = size
        if self.max_pixels is not None and width * height > self.max_pixels:
            self._refuse(f"{width}×{height} pixels", f"max_pixels={self.max_pixels}")
        short, long = min(width, height), max(width, height)
        if self.max_aspect_ratio is not None and long > self.max_aspect_ratio * short:
            self._refuse(
                f"{width}×{height} pixels, an aspect ratio of {long / short:.6g}:1",
                f"max_aspect_ratio={self.max_aspect_ratio:g}; crop it closer to a square",
            )
        if self.resize is not None and short > 0:
            self._check_resized(size, short, long)

    def _check_resized(self, size: tuple[int, int], short: int, long: int) -> None:
        """The shorter side goes to `resize`: a 1×N strip would become resize × resize·N pixels
        (memory the tiny file never shows), so the *resized* size is held to max_pixels too."""
        assert self.resize is not None
        resized = self.resize * int(self.resize * long / short)  # torchvision's arithmetic
        if self.max_pixels is not None and resized > self.max_pixels:
            self._refuse(
                f"{size[0]}×{size[1]} pixels: resizing its shorter side to {self.resize} would "
                f"make {resized} pixels",
                f"max_pixels={self.max_pixels} (an aspect ratio of {long / short:.0f}:1); "
                "crop it closer to a square",
            )

    def _refuse(self, what: str, limit: str) -> NoReturn:
        raise LimitExceeded(
            f"{self.field} is {what}, above the server limit {limit}", field=self.field
        )


def _check_webp(data: bytes, limits: _SizeLimits) -> None:
    """`limits` and PIL's decompression-bomb limit on the size a WebP header declares
    (Image.open checks the bomb limit only after making the decoder)."""
    width, height = size = _webp_size(data, limits.field)
    limits.check(size)
    bomb = Image.MAX_IMAGE_PIXELS
    if bomb is not None and width * height > bomb:
        raise LimitExceeded(
            f"{limits.field} is {width}×{height} pixels, above PIL's decompression-bomb "
            f"limit {bomb}",
            field=limits.field,
        )


def _webp_size(data: bytes, field: str) -> tuple[int, int]:
    """Width and height a WebP file declares, read from its first chunk (the WebP container
    specification: VP8X canvas, VP8L lossless or VP8 lossy frame header)."""
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        width, height = (int.from_bytes(data[i : i + 3], "little") + 1 for i in (24, 27))
        return width, height
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = (int.from_bytes(data[i : i + 2], "little") & 0x3FFF for i in (26, 28))
        return width, height
    raise InvalidArgument(
        f"{field} cannot be decoded as WebP: no VP8, VP8L or VP8X header", field=field
    )


def _upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF (or XMP) Orientation tag says: a phone's "rotate 90"
    photograph comes out upright. An unreadable EXIF block is ignored (the pixels are used as
    stored, as viewers show such a file). Not `ImageOps.exif_transpose`: it also re-encodes
    the rest of the block, which fails on tags it could read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns about each corrupt tag it skips
            method = _TRANSPOSE.get(image.getexif().get(ExifTags.Base.Orientation, 1))
    except _EXIF_ERRORS:
        return image
    return image if method is None else image.transpose(method)


def _detail(error: BaseException) -> str:
    # PIL names the in-memory file object ("<_io.BytesIO object at 0x7f...>"): say "image".
    text = re.sub(r"<[^<>]* object at 0x[0-9a-fA-F]+>", "image", str(error))
    return " ".join(text.split())[:_DETAIL_MAX] or type(error).__name__
