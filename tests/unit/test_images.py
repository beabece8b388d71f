"""Photographs as people send them: PNG, JPEG or WebP, EXIF orientation, torchvision's crop.

The reference for every preprocessed tensor is torchvision's own pipeline
(Resize + CenterCrop + ToTensor + Normalize on the PIL image); EXIF orientations are checked
against the definitions of the tag (where row 0 and column 0 of the stored pixels belong),
written out with numpy rather than with PIL's transposes.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from skimage import data as photographs
from torchvision import transforms

from smoothexplain.client.cli import _image_like
from smoothexplain.protocol.errors import (
    InvalidArgument,
    LimitExceeded,
    UnsupportedMediaType,
    status_of,
)
from smoothexplain.protocol.images import image_format, load_image, resize_crop
from smoothexplain.serving.codec import decode_request, image_to_tensor
from smoothexplain.serving.config import Limits, Preprocess

LIMITS = Limits()
IMAGENET = Preprocess()  # resize 256, crop 224, ImageNet mean and std
ORIENTATION = 0x0112


def _encode(image: Image.Image, image_format: str = "PNG", **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def _reference(image: Image.Image, pre: Preprocess) -> torch.Tensor:
    pipeline = transforms.Compose(
        [
            transforms.Resize(pre.resize),
            transforms.CenterCrop(pre.size),
            transforms.ToTensor(),
            transforms.Normalize(pre.mean, pre.std),
        ]
    )
    result = pipeline(image.convert("RGB" if pre.channels == 3 else "L"))
    assert isinstance(result, torch.Tensor)
    return result


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _assert_matches_torchvision(image: Image.Image, pre: Preprocess) -> None:
    ours = image_to_tensor(_encode(image), pre, LIMITS)
    expected = _reference(image, pre)
    assert ours.shape == expected.shape == (pre.channels, pre.size, pre.size)
    torch.testing.assert_close(ours, expected, rtol=0.0, atol=0.0)  # bit for bit


# -- resize + centre crop = torchvision's ------------------------------------------------------


@pytest.mark.parametrize("name", ["chelsea", "coffee", "astronaut", "rocket"])
def test_photographs_match_torchvision(name: str) -> None:
    photo = Image.fromarray(getattr(photographs, name)())
    _assert_matches_torchvision(photo, IMAGENET)
    _assert_matches_torchvision(photo, Preprocess(size=64, resize=73))


def test_chelsea_uses_the_truncated_long_side_and_the_rounded_crop_offset() -> None:
    """451×300 → 384×256 (256·451/300 = 384.85: truncated, not 385), then the crop starts at
    round(80 / 2) = 40 in x and round(32 / 2) = 16 in y."""
    photo = Image.fromarray(photographs.chelsea())
    assert photo.size == (451, 300)
    resized = photo.resize((384, 256), Image.Resampling.BILINEAR)
    expected = np.asarray(resized.crop((80, 16, 304, 240)))
    assert np.array_equal(np.asarray(resize_crop(photo, 256, 224)), expected)


@pytest.mark.parametrize(
    ("width", "height", "pre"),
    [
        (257, 311, IMAGENET),
        (311, 257, Preprocess(size=97, resize=113)),
        (300, 3, Preprocess(size=24, resize=31)),  # at the default max_aspect_ratio (100)
        (3, 300, Preprocess(size=24, resize=31)),
        (41, 29, Preprocess(size=64, resize=50)),  # resize < size: CenterCrop pads with zeros
        (99, 67, Preprocess(size=64, resize=64)),
        (64, 64, Preprocess(size=64, resize=64)),  # already the model's size
        (5, 7, Preprocess(size=8, resize=8)),  # upscaled
    ],
)
def test_odd_sizes_match_torchvision(width: int, height: int, pre: Preprocess) -> None:
    _assert_matches_torchvision(_noise(width, height), pre)


def test_grayscale_models_match_torchvision() -> None:
    gray = Preprocess(size=48, resize=57, mean=(0.45,), std=(0.22,))
    photo = Image.fromarray(photographs.astronaut())
    _assert_matches_torchvision(photo, gray)
    _assert_matches_torchvision(_noise(257, 311, seed=3), gray)


def test_resize_smaller_than_the_crop_pads_with_zeros() -> None:
    crop = np.asarray(resize_crop(Image.new("RGB", (20, 10), (255, 255, 255)), 10, 16))
    assert crop.shape == (16, 16, 3)
    assert (crop[3:13, :] == 255).all() and (crop[:3] == 0).all() and (crop[13:] == 0).all()


# -- WebP, and what is refused -----------------------------------------------------------------


def test_lossless_webp_gives_the_png_result_exactly() -> None:
    photo = Image.fromarray(photographs.chelsea())
    webp = _encode(photo, "WEBP", lossless=True)
    assert image_format(webp) == "WEBP"
    from_png = image_to_tensor(_encode(photo), IMAGENET, LIMITS)
    assert torch.equal(image_to_tensor(webp, IMAGENET, LIMITS), from_png)


def test_lossy_webp_is_decoded_close_to_the_original() -> None:
    photo = Image.fromarray(photographs.coffee())
    lossy = image_to_tensor(_encode(photo, "WEBP", quality=95), IMAGENET, LIMITS)
    exact = image_to_tensor(_encode(photo), IMAGENET, LIMITS)
    assert lossy.shape == exact.shape
    assert float((lossy - exact).abs().mean()) < 0.05  # normalised units (std ≈ 0.22)


def test_a_webp_body_is_an_image_request() -> None:
    webp = _encode(_noise(9, 7), "WEBP", lossless=True)
    request = decode_request(webp, from_grpc=False, explain_path=True, limits=LIMITS)
    assert request.input.image == webp and request.explain


def test_multi_picture_jpeg_from_a_camera_is_accepted() -> None:
    first, second = _noise(20, 10), _noise(20, 10, seed=1)
    mpo = _encode(first, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(mpo)).format == "MPO"
    jpeg = _encode(first, "JPEG")
    assert np.array_equal(np.asarray(load_image(mpo)), np.asarray(load_image(jpeg)))


@pytest.mark.parametrize("kind", ["GIF", "BMP", "TIFF", "ICO", "PPM"])
def test_other_image_formats_are_415_naming_the_accepted_ones(kind: str) -> None:
    data = _encode(_noise(16, 16), kind)
    with pytest.raises(UnsupportedMediaType) as caught:
        image_to_tensor(data, IMAGENET, LIMITS)
    assert status_of(caught.value).http == 415 and caught.value.field == "input.image"
    assert caught.value.message == "input.image must be PNG, JPEG or WebP"
    with pytest.raises(UnsupportedMediaType) as body:
        decode_request(data, from_grpc=False, explain_path=True, limits=LIMITS)
    assert body.value.field == "body" and "PNG, JPEG or WebP" in body.value.message


@pytest.mark.parametrize(
    "data",
    [b"<svg xmlns='http://www.w3.org/2000/svg'/>", b"hello", b"RIFF\x10\0\0\0WAVEfmt ", b""],
)
def test_svg_text_and_other_riff_files_are_415(data: bytes) -> None:
    with pytest.raises(UnsupportedMediaType, match="PNG, JPEG or WebP"):
        image_to_tensor(data, IMAGENET, LIMITS)


@pytest.mark.parametrize("cut", [16, 26, 60, -20])
def test_broken_webp_is_a_400_not_a_crash(cut: int) -> None:
    webp = _encode(Image.fromarray(photographs.coffee()), "WEBP", quality=80)
    with pytest.raises(InvalidArgument, match="cannot be decoded as WebP") as caught:
        image_to_tensor(webp[:cut], IMAGENET, LIMITS)
    assert status_of(caught.value).http == 400 and caught.value.field == "input.image"


def _declared_webp(width: int, height: int) -> bytes:
    """A VP8X WebP header declaring a width × height canvas, with no frame after it."""
    header = bytes(4) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    chunk = b"VP8X" + len(header).to_bytes(4, "little") + header
    return b"RIFF" + (4 + len(chunk)).to_bytes(4, "little") + b"WEBP" + chunk


@pytest.mark.parametrize(
    ("max_pixels", "words"),
    [(25_000_000, "max_pixels=25000000"), (None, "decompression-bomb limit")],
)
def test_webp_size_limits_are_checked_before_the_decoder_runs(
    monkeypatch: pytest.MonkeyPatch, max_pixels: int | None, words: str
) -> None:
    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("the WebP decoder ran before the size check")

    monkeypatch.setattr(Image, "open", no_decoding)
    with pytest.raises(LimitExceeded, match=words) as caught:
        load_image(_declared_webp(16_000, 16_000), max_pixels=max_pixels)
    assert caught.value.field == "input.image" and "16000×16000" in caught.value.message


def test_png_and_jpeg_above_max_pixels_are_refused() -> None:
    small = Limits(max_pixels=99)
    for data in (_encode(_noise(10, 10)), _encode(_noise(10, 10), "JPEG")):
        with pytest.raises(LimitExceeded, match="max_pixels=99"):
            image_to_tensor(data, Preprocess(size=8, resize=8), small)


@pytest.mark.parametrize(("width", "height"), [(1, 200_000), (120_000, 2)])
def test_a_thin_strip_is_refused_before_its_resize_allocates(width: int, height: int) -> None:
    """A few-kB 1×N PNG would become resize × resize·N pixels (gigabytes) when resized."""
    strip = _encode(Image.new("RGB", (width, height), (200, 10, 10)))
    assert len(strip) < 10_000
    with pytest.raises(LimitExceeded, match="aspect ratio") as info:
        image_to_tensor(strip, Preprocess(), LIMITS)
    assert info.value.field == "input.image"


def _png_header(width: int, height: int) -> bytes:
    """A PNG of 8-bit RGB with only its IHDR and IEND chunks: the size without the pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body).to_bytes(4, "big")
        return len(body).to_bytes(4, "big") + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """PNG and JPEG pixels are decoded in ImageFile.load: make decoding a test failure."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pixels were decoded before the size was checked")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


@pytest.mark.usefixtures("no_decoding")
@pytest.mark.parametrize(
    ("width", "height", "pre"),
    [
        (40_000, 1, Preprocess(size=64, resize=64)),  # the attack's 201-byte PNG, demo config
        (1, 1_000_000, Preprocess(size=64, resize=64)),
        (1, 20_000_000, IMAGENET),  # within max_pixels as decoded, not as resized
        (7_000, 18, IMAGENET),  # 389:1, just above what max_pixels allows at 256
    ],
)
def test_a_strip_too_big_once_resized_is_refused_from_its_header(
    width: int, height: int, pre: Preprocess
) -> None:
    strip = _png_header(width, height)
    with pytest.raises(LimitExceeded, match="max_pixels=25000000") as info:
        load_image(strip, crop=(pre.resize, pre.size), max_pixels=LIMITS.max_pixels)
    assert info.value.field == "input.image" and f"{width}×{height}" in info.value.message
    assert "resizing its shorter side" in info.value.message


@pytest.mark.usefixtures("no_decoding")
@pytest.mark.parametrize(
    ("width", "height", "words"),
    [
        (25_000_001, 1, "25000001×1 pixels, above the server limit max_pixels=25000000"),
        (100_000, 100_000, "decompression bomb"),  # PIL's own limit, checked as it opens
    ],
)
def test_a_tiny_png_claiming_a_huge_size_is_refused_undecoded(
    width: int, height: int, words: str
) -> None:
    claim = _png_header(width, height)
    assert len(claim) < 60
    with pytest.raises(LimitExceeded, match=words) as info:
        load_image(claim, crop=(256, 224), max_pixels=LIMITS.max_pixels)
    assert info.value.field == "input.image" and status_of(info.value).http == 400


@pytest.mark.usefixtures("no_decoding")
@pytest.mark.parametrize(("width", "height"), [(101, 1), (1, 101), (3_000, 29), (29, 3_000)])
def test_an_aspect_ratio_above_the_limit_is_refused_from_its_header(
    width: int, height: int
) -> None:
    with pytest.raises(LimitExceeded, match="max_aspect_ratio=100") as info:
        load_image(_png_header(width, height), crop=(64, 64), max_aspect_ratio=100)
    assert info.value.field == "input.image"
    assert f"{max(width, height) / min(width, height):.6g}:1" in info.value.message


def test_an_aspect_ratio_just_above_the_limit_does_not_read_as_equal_to_it() -> None:
    with pytest.raises(LimitExceeded) as info:
        load_image(_png_header(100, 10001), crop=(64, 64), max_aspect_ratio=100)
    assert "an aspect ratio of 100.01:1, above the server limit max_aspect_ratio=100" in str(
        info.value.message
    )


def test_a_webp_strip_is_refused_before_its_decoder_is_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_decoder(*args: object, **kwargs: object) -> None:
        raise AssertionError("the WebP decoder ran before the size check")

    monkeypatch.setattr(Image, "open", no_decoder)
    with pytest.raises(LimitExceeded, match="max_aspect_ratio=100"):
        load_image(_declared_webp(16_000, 2), crop=(64, 64), max_aspect_ratio=100)
    with pytest.raises(LimitExceeded, match="resizing its shorter side"):
        load_image(_declared_webp(16_000, 2), crop=(256, 224), max_pixels=LIMITS.max_pixels)


@pytest.mark.parametrize(("width", "height"), [(100, 1), (1, 100), (2_400, 300)])
def test_images_at_or_below_the_aspect_limit_match_torchvision(width: int, height: int) -> None:
    """A 100:1 strip and an 8:1 panorama are served as before, bit for bit."""
    image = _noise(width, height, seed=width)
    pre = Preprocess(size=24, resize=31)
    limited = load_image(_encode(image), crop=(31, 24), max_aspect_ratio=100)
    assert limited.size == (24, 24)
    assert np.array_equal(np.asarray(limited), np.asarray(resize_crop(image, 31, 24)))
    _assert_matches_torchvision(image, pre)


def test_sixteen_bit_grayscale_is_scaled_not_clipped() -> None:
    ramp = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    picture = load_image(_encode(Image.fromarray(ramp)), mode="RGB")
    pixels = np.asarray(picture, dtype=np.float64)
    assert abs(pixels.mean() - 127.5) < 1.0  # PIL's own convert gives ~254
    eight = load_image(_encode(Image.fromarray((ramp / 257).round().astype(np.uint8))))
    assert np.abs(pixels - np.asarray(eight, dtype=np.float64)).max() <= 1


# -- EXIF orientation ----------------------------------------------------------------------------

# Orientation tag → the stored pixels of an upright image, from the tag's definition: where the
# stored row 0 / column 0 belong in the upright picture.
STORED = {
    1: lambda u: u,  # row 0 top, column 0 left
    2: lambda u: u[:, ::-1],  # row 0 top, column 0 right
    3: lambda u: u[::-1, ::-1],  # row 0 bottom, column 0 right
    4: lambda u: u[::-1, :],  # row 0 bottom, column 0 left
    5: lambda u: u.transpose(1, 0, 2),  # row 0 left, column 0 top
    6: lambda u: np.rot90(u, 1),  # row 0 right, column 0 top ("rotate 90 cw to view")
    7: lambda u: np.rot90(u, 1)[:, ::-1],  # row 0 right, column 0 bottom
    8: lambda u: np.rot90(u, -1),  # row 0 left, column 0 bottom
}


def _upright_pixels() -> np.ndarray:
    """A 5 wide × 3 high image with every pixel different: any flip or turn shows."""
    values = np.arange(5 * 3 * 3, dtype=np.uint8).reshape(3, 5, 3) * 5
    return values


def _tagged(pixels: np.ndarray, orientation: int, image_format: str = "PNG", **kw: Any) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    image = Image.fromarray(np.ascontiguousarray(pixels))
    return _encode(image, image_format, exif=exif.tobytes(), **kw)


def test_the_stored_layouts_are_all_different() -> None:
    upright = _upright_pixels()
    layouts = {STORED[k](upright).tobytes() + bytes(STORED[k](upright).shape) for k in STORED}
    assert len(layouts) == 8


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("image_format", ["PNG", "WEBP"])
def test_exif_orientation_gives_the_upright_pixels(orientation: int, image_format: str) -> None:
    upright = _upright_pixels()
    stored = STORED[orientation](upright)
    options = {"lossless": True, "exact": True} if image_format == "WEBP" else {}
    data = _tagged(stored, orientation, image_format, **options)
    assert np.array_equal(np.asarray(load_image(data)), upright)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_jpeg_exif_orientation_turns_the_decoded_pixels(orientation: int) -> None:
    stored = STORED[orientation](np.asarray(_noise(40, 24)))
    plain = np.asarray(load_image(_encode(Image.fromarray(np.ascontiguousarray(stored)), "JPEG")))
    turned = np.asarray(load_image(_tagged(stored, orientation, "JPEG")))
    # the same JPEG pixels, put upright: invert the stored layout of this orientation
    inverse = {
        3: lambda a: a[::-1, ::-1],
        6: lambda a: np.rot90(a, -1),
        8: lambda a: np.rot90(a, 1),
    }
    assert turned.shape == (24, 40, 3)
    assert np.array_equal(turned, inverse[orientation](plain))


def test_a_phone_photo_tagged_rotate_90_is_explained_upright() -> None:
    upright = np.asarray(_noise(24, 36, seed=4))
    pre = Preprocess(size=16, resize=20)
    expected = image_to_tensor(_encode(Image.fromarray(upright)), pre, LIMITS)
    phone = _tagged(STORED[6](upright), 6)
    assert torch.equal(image_to_tensor(phone, pre, LIMITS), expected)
    gray = Preprocess(size=16, resize=20, mean=(0.5,), std=(0.25,))
    plain = image_to_tensor(_encode(Image.fromarray(upright)), gray, LIMITS)
    assert torch.equal(image_to_tensor(phone, gray, LIMITS), plain)


def _exif_with_orientation_6() -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    exif[0x010F] = "camera maker"  # Make, ASCII
    return exif.tobytes()


@pytest.mark.parametrize(
    "block",
    [
        b"Exif\0\0XX\0*\0\0\0\x08" + bytes(8),  # neither II nor MM byte order
        _exif_with_orientation_6()[:20],  # the directory cut short
        b"Exif\0\0",
        b"\xff" * 40,
    ],
)
def test_an_unreadable_exif_block_is_ignored(block: bytes) -> None:
    stored = _upright_pixels()
    data = _encode(Image.fromarray(stored), exif=block)
    assert np.array_equal(np.asarray(load_image(data)), stored)
    pre = Preprocess(size=3, resize=3)
    torch.testing.assert_close(
        image_to_tensor(data, pre, LIMITS),
        image_to_tensor(_encode(Image.fromarray(stored)), pre, LIMITS),
    )


def test_a_readable_orientation_next_to_a_broken_tag_still_turns_the_image() -> None:
    """Make's entry rewritten from 13 ASCII characters to one FLOAT: it reads as a number,
    which PIL cannot write back as the text Make must be, yet the orientation beside it is
    readable and applied."""
    block = bytearray(_exif_with_orientation_6())
    entry = block.find(bytes.fromhex("010f0002 0000000d"))  # big-endian: tag, type, count
    assert entry > 0
    block[entry + 2 : entry + 8] = bytes.fromhex("000b 00000001")
    upright = _upright_pixels()
    data = _encode(Image.fromarray(np.ascontiguousarray(STORED[6](upright))), exif=bytes(block))
    assert np.array_equal(np.asarray(load_image(data)), upright)


# -- the CLI's overlay ------------------------------------------------------------------------


def test_the_overlay_image_is_upright() -> None:
    upright = np.asarray(_noise(12, 20, seed=5))  # 12 wide, 20 high
    phone = _tagged(STORED[6](upright), 6)
    heat = torch.zeros(3, 12, 12)
    expected = np.asarray(Image.fromarray(upright).crop((0, 4, 12, 16)))  # the centre square
    assert np.array_equal(_image_like(phone, heat), expected)


def test_the_overlay_crops_as_the_server_when_told_the_preprocess() -> None:
    photo = Image.fromarray(photographs.chelsea())
    rotated = _tagged(STORED[8](np.asarray(photo)), 8, "JPEG", quality=100)
    served = load_image(rotated, crop=(256, 224))
    overlay = _image_like(rotated, torch.zeros(3, 224, 224), crop=(256, 224))
    assert overlay.shape == (224, 224, 3)
    assert np.array_equal(overlay, np.asarray(served))
    reference = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])
    upright = load_image(rotated)
    assert upright.size == (451, 300)
    assert np.array_equal(overlay, np.asarray(reference(upright)))


def test_the_overlay_names_the_image_argument_when_it_cannot_decode() -> None:
    with pytest.raises(UnsupportedMediaType, match="IMAGE must be PNG, JPEG or WebP"):
        _image_like(_encode(_noise(8, 8), "GIF"), torch.zeros(3, 8, 8))


@pytest.mark.parametrize(
    ("width", "height", "resize", "size"),
    [
        (640, 480, 256, 224),
        (480, 640, 256, 224),
        (300, 300, 256, 224),
        (97, 31, 40, 60),
        (5, 9, 7, 8),
    ],
)
def test_resize_crop_matches_torchvision_pixel_for_pixel(
    width: int, height: int, resize: int, size: int
) -> None:
    """The client's PIL-only crop is torchvision's Resize + CenterCrop (padding included)."""
    import torchvision.transforms.functional as tvf  # type: ignore[import-untyped]

    pixels = np.random.default_rng(width * height).integers(0, 256, (height, width, 3))
    image = Image.fromarray(pixels.astype(np.uint8), mode="RGB")
    expected = tvf.center_crop(tvf.resize(image, [resize]), [size])
    got = resize_crop(image, resize, size)
    assert got.size == expected.size == (size, size)
    assert np.array_equal(np.asarray(got), np.asarray(expected))
