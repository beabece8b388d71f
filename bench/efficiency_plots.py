"""Plots for the sample-efficiency and mixed-precision results (issue 7 items 4 and 5)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from plots import plt, save_figure

__all__ = ["precision_plot", "sampling_plot"]

SCHEME_LABELS = {"iid": "iid", "antithetic": "antithetic pairs", "qmc": "scrambled Sobol"}


def sampling_plot(record: dict[str, Any], path: Path) -> None:
    """Relative L2 error against passes per (model, method), one line per noise scheme."""
    results = record["results"]
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.8), squeeze=False)
    for ax, (name, row) in zip(axes[0], results.items(), strict=True):
        for scheme, curve in row["curves"].items():
            passes = sorted(int(n) for n in curve)
            errors = [curve[str(n)]["rel_l2"] for n in passes]
            ax.plot(passes, errors, "o-", label=SCHEME_LABELS.get(scheme, scheme))
        stop = row["adaptive_stopping"]
        ax.plot(
            stop["mean_samples"], stop["mean_rel_l2"], "k*", markersize=10, label="adaptive stop"
        )
        iid50 = row["curves"]["iid"]["50"]["rel_l2"]
        ax.axhline(iid50, color="grey", linestyle="--", linewidth=0.8, label="iid at 50")
        ax.axvline(25, color="grey", linestyle=":", linewidth=0.8, label="target: 25 passes")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.minorticks_off()  # log axes: label only the ticks set here
        ax.set_xticks([8, 16, 25, 32, 50], ["8", "16", "25", "32", "50"])
        ticks = [0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5]
        ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
        ax.set_xlabel("forward+backward passes")
        ax.set_ylabel("relative L2 error vs reference")
        ax.set_title(name, fontsize=8)
        ax.legend(fontsize=7)
    save_figure(fig, path, "Sample efficiency at equal passes (lower is better)")


def precision_plot(record: dict[str, Any], path: Path) -> None:
    """Speed-up over fp32 and error against fp32 per method and precision."""
    results = record["results"]
    methods = list(results)
    precisions = [p for p in next(iter(results.values())) if p != "fp32"]
    fig, (speed, error) = plt.subplots(1, 2, figsize=(10, 3.8))
    width = 0.8 / max(len(precisions), 1)
    for i, precision in enumerate(precisions):
        xs = [j + i * width for j in range(len(methods))]
        speed.bar(xs, [results[m][precision]["speedup_vs_fp32"] for m in methods], width)
        error.bar(
            xs,
            [results[m][precision]["rel_l2_vs_fp32"] for m in methods],
            width,
            label=precision,
        )
    labels = [m.replace("_", " ").replace("integrated gradients", "IG") for m in methods]
    for ax in (speed, error):
        ax.set_xticks([j + width * (len(precisions) - 1) / 2 for j in range(len(methods))])
        ax.set_xticklabels(labels, fontsize=8)
    speed.axhline(1.0, color="black", linewidth=0.8)
    speed.set_ylabel("speed-up over fp32 (higher is better)")
    error.set_ylabel("relative L2 error vs fp32")
    error.legend(fontsize=8)
    device = record["machine"].get("device", "cpu")
    save_figure(fig, path, f"Mixed precision on {device}")
