"""Synthetic "coloured shape on clutter" data set for the demo classifier.

Every image holds exactly one filled shape (the label) in a random colour, position, scale and
rotation on a textured background of low-contrast blobs, thin lines and pixel noise, so that a
classifier has to find the object rather than read off a global statistic. The binary mask of
the shape is returned with every image; it is the ground truth that saliency maps are compared
against.

Generation is vectorised over fixed-size chunks. Each chunk draws from its own generator,
seeded from ``(seed, chunk index)``, so image ``i`` of a data set does not depend on how many
images were requested after it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

__all__ = [
    "CLASS_NAMES",
    "NUM_CLASSES",
    "ShapesDataset",
    "make_dataset",
    "render_batch",
    "render_sample",
]

CLASS_NAMES: Final[tuple[str, ...]] = (
    "circle",
    "square",
    "triangle",
    "cross",
    "ring",
    "star",
    "crescent",
)
NUM_CLASSES: Final[int] = len(CLASS_NAMES)

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]

# A fixed chunk size (independent of `count`) is what makes prefixes of data sets stable.
_CHUNK: Final[int] = 256
# Domain-separation tag so that render_sample(seed=s) never replays chunk streams of seed s.
_SAMPLE_TAG: Final[int] = 0x5A3E

# Shape geometry is expressed in a local frame where the shape fits in the unit disc.
_MIN_RADIUS: Final[float] = 0.13  # fraction of the image size
_MAX_RADIUS: Final[float] = 0.27
# Below this RGB distance between shape and background base colour the object can become
# invisible, which would make labels noise rather than a hard-but-fair task.
_MIN_CONTRAST: Final[float] = 0.4
_NUM_BLOBS: Final[int] = 6
_NUM_LINES: Final[int] = 4
_BLOB_AMPLITUDE: Final[float] = 0.16
_LINE_AMPLITUDE: Final[float] = 0.2
_PIXEL_NOISE: Final[float] = 0.04


@dataclass(frozen=True)
class ShapesDataset:
    """A labelled batch of shape images with per-image object masks.

    Attributes:
        images: ``(N, 3, H, W)`` float32 in ``[0, 1]``.
        labels: ``(N,)`` int64 class indices into :data:`CLASS_NAMES`.
        masks: ``(N, H, W)`` bool, true on the pixels of the drawn shape.
    """

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


# --- shape membership tests in the local (u, v) frame --------------------------------------


def _circle(u: FloatArray, v: FloatArray) -> BoolArray:
    return np.asarray(u * u + v * v <= 1.0)


def _square(u: FloatArray, v: FloatArray) -> BoolArray:
    # Half-side 0.75 keeps the area close to the other shapes while staying inside the disc.
    return np.asarray(np.maximum(np.abs(u), np.abs(v)) <= 0.75)


def _regular_polygon(u: FloatArray, v: FloatArray, sides: int) -> BoolArray:
    inradius = np.cos(np.pi / sides)
    inside = np.ones(u.shape, dtype=np.bool_)
    for k in range(sides):
        angle = np.pi / 2 + 2 * np.pi * k / sides + np.pi / sides
        inside &= u * np.cos(angle) + v * np.sin(angle) <= inradius
    return inside


def _triangle(u: FloatArray, v: FloatArray) -> BoolArray:
    return _regular_polygon(u, v, 3)


def _cross(u: FloatArray, v: FloatArray) -> BoolArray:
    au, av = np.abs(u), np.abs(v)
    return np.asarray(((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95)))


def _ring(u: FloatArray, v: FloatArray) -> BoolArray:
    r2 = u * u + v * v
    return np.asarray((r2 <= 1.0) & (r2 >= 0.55**2))


def _star(u: FloatArray, v: FloatArray) -> BoolArray:
    points, inner = 5, 0.45
    sector = 2 * np.pi / points
    # Fold every point into the half-sector between an outer tip (angle 0) and the next
    # inner vertex, where the star boundary is a single straight edge.
    phi = np.mod(np.arctan2(u, -v), sector)
    phi = np.abs(phi - sector / 2)
    phi = sector / 2 - phi
    r = np.sqrt(u * u + v * v)
    px, py = r * np.cos(phi), r * np.sin(phi)
    bx, by = inner * np.cos(sector / 2), inner * np.sin(sector / 2)
    # Inside when the point lies on the origin's side of the tip→inner-vertex edge.
    edge = (bx - 1.0) * (py - 0.0) - by * (px - 1.0)
    origin_side = (bx - 1.0) * (0.0 - 0.0) - by * (0.0 - 1.0)
    return np.asarray(edge * origin_side >= 0.0)


def _crescent(u: FloatArray, v: FloatArray) -> BoolArray:
    bite = (u - 0.45) ** 2 + v * v <= 0.8**2
    return np.asarray((u * u + v * v <= 1.0) & ~bite)


_SHAPES: Final[tuple[Callable[[FloatArray, FloatArray], BoolArray], ...]] = (
    _circle,
    _square,
    _triangle,
    _cross,
    _ring,
    _star,
    _crescent,
)


# --- rendering -------------------------------------------------------------------------------


def _column(values: npt.ArrayLike) -> FloatArray:
    """Per-image scalars ``(N,)`` as float32 ``(N, 1, 1)`` for broadcasting over pixels."""
    return np.asarray(values, dtype=np.float32).reshape(-1, 1, 1)


def _pixel_grid(size: int) -> tuple[FloatArray, FloatArray]:
    coords = np.arange(size, dtype=np.float32) + np.float32(0.5)
    return coords[None, :, None], coords[None, None, :]  # (1, H, 1) rows, (1, 1, W) cols


def _shape_masks(rng: np.random.Generator, labels: IntArray, size: int) -> BoolArray:
    n = labels.shape[0]
    radius = rng.uniform(_MIN_RADIUS, _MAX_RADIUS, n) * size
    # Keep the whole shape inside the frame: the label must always be fully visible.
    cy = rng.uniform(radius + 1.0, size - 1.0 - radius, n)
    cx = rng.uniform(radius + 1.0, size - 1.0 - radius, n)
    theta = rng.uniform(0.0, 2 * np.pi, n)
    ys, xs = _pixel_grid(size)
    dy, dx = ys - _column(cy), xs - _column(cx)
    cos_t, sin_t = _column(np.cos(theta)), _column(np.sin(theta))
    inv_r = _column(1.0 / radius)
    u = (dx * cos_t + dy * sin_t) * inv_r
    v = (dy * cos_t - dx * sin_t) * inv_r
    masks = np.zeros((n, size, size), dtype=np.bool_)
    for cls, inside in enumerate(_SHAPES):
        rows = np.flatnonzero(labels == cls)
        if rows.size:
            masks[rows] = inside(u[rows], v[rows])
    return masks


def _blob_texture(rng: np.random.Generator, n: int, size: int) -> FloatArray:
    coords = np.arange(size, dtype=np.float32) + np.float32(0.5)
    cy = rng.uniform(0.0, size, (n, _NUM_BLOBS, 1)).astype(np.float32)
    cx = rng.uniform(0.0, size, (n, _NUM_BLOBS, 1)).astype(np.float32)
    sigma = rng.uniform(0.05, 0.2, (n, _NUM_BLOBS, 1)).astype(np.float32) * size
    amp = rng.uniform(-_BLOB_AMPLITUDE, _BLOB_AMPLITUDE, (n, _NUM_BLOBS, 3)).astype(np.float32)
    # An isotropic Gaussian is separable, so the sum of blobs is a batched (H×K)·(K×W·3) matrix
    # product: far cheaper than evaluating K full-image exponentials per image.
    wy = np.exp(-((coords - cy) ** 2) / (2 * sigma * sigma))  # (n, K, H)
    wx = np.exp(-((coords - cx) ** 2) / (2 * sigma * sigma))  # (n, K, W)
    colour_cols = (wx[..., None] * amp[:, :, None, :]).reshape(n, _NUM_BLOBS, size * 3)
    texture: FloatArray = np.matmul(wy.transpose(0, 2, 1), colour_cols)
    return texture.reshape(n, size, size, 3)


def _line_texture(rng: np.random.Generator, n: int, size: int) -> FloatArray:
    ys, xs = _pixel_grid(size)
    texture = np.zeros((n, size, size, 3), dtype=np.float32)
    for _ in range(_NUM_LINES):
        # Segments rather than infinite lines: straight edges that end inside the frame look
        # like fragments of squares/crosses, which is exactly the confusion we want to train on.
        y0 = _column(rng.uniform(0.0, size, n))
        x0 = _column(rng.uniform(0.0, size, n))
        angle = rng.uniform(0.0, np.pi, n)
        length = rng.uniform(0.2, 0.8, n) * size
        ey, ex = _column(np.sin(angle) * length), _column(np.cos(angle) * length)
        half_width = _column(rng.uniform(0.5, 1.5, n))
        amp = rng.uniform(-_LINE_AMPLITUDE, _LINE_AMPLITUDE, (n, 3)).astype(np.float32)
        t = ((ys - y0) * ey + (xs - x0) * ex) / (ey * ey + ex * ex)
        t = np.clip(t, 0.0, 1.0)
        dist2 = (ys - y0 - t * ey) ** 2 + (xs - x0 - t * ex) ** 2
        on_line = (dist2 <= half_width * half_width).astype(np.float32)
        texture += on_line[..., None] * amp[:, None, None, :]
    return texture


def _contrasting_colours(rng: np.random.Generator, base: FloatArray) -> FloatArray:
    colours = rng.uniform(0.0, 1.0, base.shape).astype(np.float32)
    # Rejection sampling keeps the distribution uniform over the admissible colours; with a
    # 0.4 threshold the acceptance rate is high, so this loop ends after a few rounds.
    while True:
        bad = np.linalg.norm(colours - base, axis=1) < _MIN_CONTRAST
        if not bad.any():
            return colours
        colours[bad] = rng.uniform(0.0, 1.0, (int(bad.sum()), 3)).astype(np.float32)


def render_batch(
    rng: np.random.Generator, labels: npt.ArrayLike, size: int = 64
) -> tuple[FloatArray, BoolArray]:
    """Render one image per label.

    Args:
        rng: source of all randomness; the result is a pure function of its state.
        labels: ``(N,)`` class indices.
        size: image height and width in pixels.

    Returns:
        ``(images, masks)``: ``(N, H, W, 3)`` float32 in ``[0, 1]`` and ``(N, H, W)`` bool.
    """
    label_array = np.asarray(labels, dtype=np.int64).reshape(-1)
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    if label_array.size and (label_array.min() < 0 or label_array.max() >= NUM_CLASSES):
        raise ValueError(f"labels must lie in [0, {NUM_CLASSES}), got {label_array!r}")
    n = label_array.shape[0]
    masks = _shape_masks(rng, label_array, size)
    base = rng.uniform(0.2, 0.8, (n, 3)).astype(np.float32)
    colours = _contrasting_colours(rng, base)
    images = base[:, None, None, :] + _blob_texture(rng, n, size) + _line_texture(rng, n, size)
    images = np.where(masks[..., None], colours[:, None, None, :], images)
    # Noise on top of the shape too, so that the object is not a perfectly flat region.
    images += np.float32(_PIXEL_NOISE) * rng.standard_normal(images.shape, dtype=np.float32)
    return np.clip(images, 0.0, 1.0).astype(np.float32), masks


def _chunk_rng(seed: int, chunk: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, chunk])))


def _render_chunk(seed: int, chunk: int, size: int) -> tuple[FloatArray, IntArray, BoolArray]:
    rng = _chunk_rng(seed, chunk)
    # A shuffled balanced label list guarantees every class in every chunk.
    labels = rng.permutation(np.arange(_CHUNK, dtype=np.int64) % NUM_CLASSES)
    images, masks = render_batch(rng, labels, size)
    return images, labels, masks


def make_dataset(count: int, seed: int, size: int = 64) -> ShapesDataset:
    """Generate ``count`` labelled images, deterministically from ``seed``.

    Image ``i`` is the same for every ``count > i``; different seeds give unrelated data.
    """
    if count < 0:
        raise ValueError(f"count must be non-negative, got {count}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    chunks = [_render_chunk(seed, c, size) for c in range(-(-count // _CHUNK))]
    if not chunks:
        return ShapesDataset(
            images=torch.zeros((0, 3, size, size), dtype=torch.float32),
            labels=torch.zeros((0,), dtype=torch.int64),
            masks=torch.zeros((0, size, size), dtype=torch.bool),
        )
    images = np.concatenate([c[0] for c in chunks])[:count]
    labels = np.concatenate([c[1] for c in chunks])[:count]
    masks = np.concatenate([c[2] for c in chunks])[:count]
    return ShapesDataset(
        images=torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
        labels=torch.from_numpy(labels),
        masks=torch.from_numpy(masks),
    )


def render_sample(label: int, seed: int, size: int = 64) -> tuple[Image.Image, BoolArray]:
    """Render a single image of class ``label`` as an RGB PIL image plus its ``(H, W)`` mask."""
    if not 0 <= label < NUM_CLASSES:
        raise ValueError(f"label must lie in [0, {NUM_CLASSES}), got {label}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([_SAMPLE_TAG, seed, label])))
    images, masks = render_batch(rng, [label], size)
    # Round rather than truncate so that a PNG round trip is within half a quantisation step.
    pixels = np.rint(images[0] * 255.0).astype(np.uint8)
    return Image.fromarray(pixels), masks[0]
