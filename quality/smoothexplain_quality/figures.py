"""The report's PNG figures (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib as mpl

mpl.use("Agg")  # before pyplot: render to files only, whatever the machine has

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

from .stats import mean_ci

__all__ = ["convergence_figure", "map_grid", "photo_grid", "sanity_figure"]

# (column title, key of the maps, whether the map is in squared units)
GRID_COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("gradient", "grad/plain", False),
    ("SmoothGrad", "grad/sg", False),
    ("√SmoothGrad²", "grad/sg_sq", True),
    ("√VarGrad", "grad/vg", True),
    ("AdaptGrad", "grad/ag", False),
    ("√adaptive VarGrad", "grad/avg", True),
)


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path


def _finish_grid(
    figure: Figure, axes: np.ndarray, columns: Sequence[str], title: str, path: Path
) -> Path:
    """Column titles on the first row, no ticks, the figure's title; then save it."""
    for c, name in enumerate(columns):
        axes[0, c].set_title(name, fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    figure.suptitle(title, fontsize=9)
    return _save(figure, path)


def map_grid(maps: Mapping[str, np.ndarray], model: str, title: str, path: Path) -> Path:
    """Input (mask outlined) and the six maps per image; one colour scale per row.

    Squared-unit maps (SmoothGrad², VarGrad) are shown as their square roots so that every
    panel of a row is in gradient units and one scale is meaningful.
    """
    images, masks = maps["images"], maps["masks"]
    rows, cols = images.shape[0], len(GRID_COLUMNS) + 1
    figure, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows), squeeze=False)
    for r in range(rows):
        panels = []
        for _, key, squared in GRID_COLUMNS:
            panel = maps[f"{model}:{key}"][r].astype(np.float64)
            panels.append(np.sqrt(panel) if squared else panel)
        top = float(np.percentile(np.stack(panels), 99.5)) or 1.0
        axes[r, 0].imshow(np.transpose(images[r], (1, 2, 0)).clip(0, 1))
        # contour() needs numbers: a bool mask draws nothing.
        axes[r, 0].contour(masks[r].astype(np.float64), levels=[0.5], colors="cyan", linewidths=1.0)
        for c, panel in enumerate(panels, start=1):
            axes[r, c].imshow(panel, cmap="inferno", vmin=0.0, vmax=top)
    columns = ["input (mask)"] + [col[0] for col in GRID_COLUMNS]
    return _finish_grid(figure, axes, columns, title, path)


def _band(
    ax: Axes,
    x: Sequence[float],
    series: Sequence[Sequence[float]],
    label: str,
    color: str | None = None,
    linestyle: str = "-",
) -> None:
    """Mean line with its 95 % bootstrap band."""
    estimates = [mean_ci(values) for values in series]
    mean = [e.mean for e in estimates]
    (line,) = ax.plot(
        x, mean, marker="o", markersize=3, label=label, color=color, linestyle=linestyle
    )
    low, high = [e.low for e in estimates], [e.high for e in estimates]
    ax.fill_between(x, low, high, alpha=0.12, color=line.get_color())


_LINES = {"plain": "-", "sg": "--", "ag": ":"}


def sanity_figure(
    sanity: Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]],
    labels: Mapping[str, str],
    path: Path,
) -> Path:
    """Spearman ρ (trained vs randomised maps) against how many stages are randomised.

    One colour per base method, one line style per smoothing (plain, SmoothGrad, AdaptGrad).
    """
    bases = list(dict.fromkeys(key.split("/")[0] for key in labels))  # first-seen order
    colours = {base: f"C{i}" for i, base in enumerate(bases)}
    figure, axes = plt.subplots(1, len(sanity), figsize=(5.2 * len(sanity), 3.6), squeeze=False)
    for ax, (model, stages) in zip(axes[0], sanity.items(), strict=True):
        names = list(stages)
        for key, label in labels.items():
            base, smoothing = key.split("/")
            series = [stages[s][key] for s in names]
            x = list(range(1, len(names) + 1))
            _band(ax, x, series, label, colours[base], _LINES.get(smoothing, "-."))
        ax.set_xticks(range(1, len(names) + 1), [f"…{n}" for n in names], fontsize=7)
        ax.set_xlabel("randomised from the logits down to", fontsize=8)
        ax.set_ylabel("Spearman ρ with the trained model's map", fontsize=8)
        ax.set_ylim(-0.2, 1.0)
        ax.axhline(0.0, color="grey", linewidth=0.5)
        ax.set_title(model, fontsize=9)
    axes[0, -1].legend(fontsize=6, ncol=2)
    return _save(figure, path)


def convergence_figure(curves: Mapping[str, Mapping[str, Sequence[float]]], path: Path) -> Path:
    """Relative L2 error against nt_samples, log–log, with the Monte-Carlo 1/√n slope."""
    figure, ax = plt.subplots(figsize=(5.2, 3.8))
    for name, errors in curves.items():
        samples = [int(n) for n in errors]
        _band(ax, samples, [errors[str(n)] for n in samples], name)
    first = next(iter(curves.values()))
    samples = [int(n) for n in first]
    anchor = mean_ci(first[str(samples[0])]).mean
    ax.plot(
        samples, [anchor / np.sqrt(n / samples[0]) for n in samples], "k--", lw=0.7, label="∝ 1/√n"
    )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.set_xticks(samples, [str(n) for n in samples])
    ax.set_xlabel("nt_samples", fontsize=8)
    ax.set_ylabel("‖estimate − reference‖ / ‖reference‖", fontsize=8)
    ax.legend(fontsize=7)
    return _save(figure, path)


# (column title, key of the pooled map) of the pretrained networks' grids
PHOTO_COLUMNS: tuple[tuple[str, str], ...] = (
    ("gradient", "grad/plain"),
    ("SmoothGrad", "grad/sg"),
    ("AdaptGrad", "grad/ag"),
    ("guided backprop", "gbp/plain"),
    ("IG (black)", "ig_b/plain"),
    ("Smooth Grad-CAM++", "gcampp/sg"),
)


def photo_grid(
    maps: Mapping[str, np.ndarray], network: str, rows: Sequence[str], title: str, path: Path
) -> Path:
    """Each photo (as cropped for the network) and its maps; one colour scale per panel, since
    the methods' units differ (0 to the panel's 99.5th percentile)."""
    photos = maps[f"{network}:photo"]
    cols = len(PHOTO_COLUMNS) + 1
    figure, axes = plt.subplots(
        len(rows), cols, figsize=(1.9 * cols, 1.9 * len(rows)), squeeze=False
    )
    for r, name in enumerate(rows):
        axes[r, 0].imshow(photos[r])
        axes[r, 0].set_ylabel(name, fontsize=8)
        for c, (_, key) in enumerate(PHOTO_COLUMNS, start=1):
            panel = maps[f"{network}:{key}"][r].astype(np.float64)
            top = float(np.percentile(panel, 99.5)) or 1.0
            axes[r, c].imshow(panel, cmap="inferno", vmin=0.0, vmax=top)
    columns = ["photo (as cropped)"] + [col[0] for col in PHOTO_COLUMNS]
    return _finish_grid(figure, axes, columns, title, path)
