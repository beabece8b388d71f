"""The report's measurements: the metric grid, sanity checks, convergence and the defaults sweep.

Each study returns per-image values (numpy arrays); summarising them is the report's job.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from smoothexplain.demo import make_dataset, normalize

from .grid import Cell, Settings, attribute
from .metrics import (
    FloatArray,
    pointing_game,
    pool,
    relative_error,
    relevance_mass,
    relevance_rank,
    spearman,
)
from .randomize import cascade
from .sparseness import sparseness

__all__ = [
    "Convergence",
    "HeldOut",
    "Log",
    "cascading_randomisation",
    "convergence",
    "held_out",
    "pooled_maps",
    "randomisation",
    "score",
    "sweep",
]

Log = Callable[[str], None]
Scores = dict[str, FloatArray]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class HeldOut:
    """Held-out images: normalised inputs, [0, 1] pixels, labels and object masks."""

    inputs: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor
    masks: np.ndarray

    def head(self, count: int) -> HeldOut:
        return HeldOut(
            self.inputs[:count], self.images[:count], self.labels[:count], self.masks[:count]
        )


def held_out(count: int, seed: int, size: int = 64) -> HeldOut:
    data = make_dataset(count, seed, size)
    return HeldOut(normalize(data.images), data.images, data.labels, data.masks.numpy())


def pooled_maps(
    model: nn.Module,
    data: HeldOut,
    cells: Sequence[Cell],
    settings: Settings,
    *,
    chunk: int = 50,
    log: Log = _stderr,
) -> dict[Cell, FloatArray]:
    """Pooled maps ``(N, H, W)`` of every cell; the true label is the explained class."""
    maps: dict[Cell, FloatArray] = {}
    for cell in cells:
        start = time.perf_counter()
        parts = [
            pool(attribute(model, x, y, cell, settings).numpy())
            for x, y in zip(
                torch.split(data.inputs, chunk), torch.split(data.labels, chunk), strict=True
            )
        ]
        maps[cell] = np.concatenate(parts)
        log(f"  {cell.label:<16} {len(data.labels)} images {time.perf_counter() - start:6.1f} s")
    return maps


def score(maps: FloatArray, masks: np.ndarray) -> Scores:
    """Every per-image metric of one cell's pooled maps."""
    return {
        "sparseness": sparseness(maps),
        "mass": relevance_mass(maps, masks),
        "rank": relevance_rank(maps, masks),
        "pointing": pointing_game(maps, masks),
    }


def randomisation(
    reference: dict[Cell, FloatArray],
    models: Sequence[tuple[str, nn.Module]],
    data: HeldOut,
    settings: Settings,
    log: Log = _stderr,
) -> dict[str, dict[Cell, FloatArray]]:
    """Spearman ρ between each cell's maps under `reference` and under each changed model.

    `reference` holds the maps of the trained model for the first ``len(data)`` images (same
    seeds, so they are exactly what :func:`pooled_maps` gives on this subset).
    """
    count = int(data.labels.shape[0])
    result: dict[str, dict[Cell, FloatArray]] = {}
    for name, changed in models:
        log(f" randomised from {name}")
        maps = pooled_maps(changed, data, list(reference), settings, log=log)
        result[name] = {cell: spearman(reference[cell][:count], maps[cell]) for cell in maps}
    return result


def cascading_randomisation(
    model: nn.Module,
    reference: dict[Cell, FloatArray],
    data: HeldOut,
    settings: Settings,
    log: Log = _stderr,
) -> dict[str, dict[Cell, FloatArray]]:
    """:func:`randomisation` over the cascade of `model` (see :mod:`.randomize`)."""
    return randomisation(reference, cascade(model, settings.seed), data, settings, log)


@dataclass(frozen=True)
class Convergence:
    """Per-image error of an n-sample estimate against an `n_ref`-sample reference."""

    relative_error: dict[int, FloatArray]  # raw (C, H, W) maps, L2
    rank_correlation: dict[int, FloatArray]  # pooled maps, Spearman


def convergence(
    model: nn.Module,
    data: HeldOut,
    cell: Cell,
    settings: Settings,
    samples: Sequence[int],
    reference_samples: int,
    repeats: int,
    log: Log = _stderr,
) -> Convergence:
    """Monte-Carlo error of `cell` versus nt_samples; repeats use seeds unrelated to the
    reference's, and their errors are averaged per image."""
    x, y = data.inputs, data.labels
    ref_settings = replace(settings, nt_samples=reference_samples, seed=settings.seed + 10_000)
    reference = attribute(model, x, y, cell, ref_settings).numpy()
    ref_pooled = pool(reference)
    errors: dict[int, FloatArray] = {}
    ranks: dict[int, FloatArray] = {}
    for n in samples:
        start = time.perf_counter()
        runs = [
            attribute(
                model, x, y, cell, replace(settings, nt_samples=n, seed=settings.seed + r)
            ).numpy()
            for r in range(repeats)
        ]
        errors[n] = np.mean([relative_error(run, reference) for run in runs], axis=0)
        ranks[n] = np.mean([spearman(pool(run), ref_pooled) for run in runs], axis=0)
        log(f"  {cell.label:<4} n={n:<4} {time.perf_counter() - start:6.1f} s")
    return Convergence(errors, ranks)


def sweep(
    model: nn.Module,
    data: HeldOut,
    settings: Settings,
    sigmas: Sequence[float],
    confidences: Sequence[float],
    log: Log = _stderr,
) -> dict[tuple[str, float], Scores]:
    """Metrics of SmoothGrad at each σ fraction and of AdaptGrad at each confidence c."""
    result: dict[tuple[str, float], Scores] = {}
    runs = [("sg", s, replace(settings, sigma=s)) for s in sigmas]
    runs += [("ag", c, replace(settings, confidence=c)) for c in confidences]
    for smoothing, value, varied in runs:
        log(f" sweep {smoothing} {value}")
        maps = pooled_maps(model, data, [Cell("grad", smoothing)], varied, log=log)
        result[(smoothing, value)] = score(next(iter(maps.values())), data.masks)
    return result
