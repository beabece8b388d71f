"""One PNG per performance result (engine, fusion, memory, serving), written by `report.py`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

__all__ = ["PLOTTERS", "plt", "save_figure"]

MIB = 1024 * 1024


def save_figure(fig: Any, path: Path, title: str) -> None:
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def engine_plot(record: dict[str, Any], path: Path) -> None:
    cases = record["cases"]
    names = ["engine", "captum_noise_tunnel", "per_sample_loop"]
    labels = [
        f"{c['model']}\n{c['method'].replace('integrated_gradients', 'IG')}\n{c['variant']}"
        for c in cases
    ]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(cases)), 4))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        xs = [j + i * width for j, c in enumerate(cases) if name in c["results"]]
        ys = [c["results"][name]["ratio_to_floor"] for c in cases if name in c["results"]]
        ax.bar(xs, ys, width, label=name.replace("_", " "))
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.axhline(1.02, color="grey", linestyle="--", linewidth=0.8, label="target 1.02")
    ax.set_xticks([j + width for j in range(len(cases))], labels, fontsize=8)
    ax.set_ylabel("time / bare forward+backward floor")
    ax.legend(fontsize=8)
    save_figure(fig, path, "Engine overhead (lower is better)")


def fusion_plot(record: dict[str, Any], path: Path) -> None:
    cases = record["cases"]
    ks = [c["k"] for c in cases]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in cases[0]["requests_per_s"]:
        style = "o-" if name.startswith("fused") else "s--"
        ax.plot(ks, [c["requests_per_s"][name] for c in cases], style, label=name.replace("_", " "))
    ax.set_xlabel("concurrent requests k")
    ax.set_ylabel("requests / s")
    ax.set_xticks(ks)
    ax.legend(fontsize=8)
    save_figure(
        fig, path, f"Cross-request fusion, nt_samples {record['settings']['nt_samples']} each"
    )


def memory_plot(record: dict[str, Any], path: Path) -> None:
    s = record["settings"]
    key = "cuda_peak" if s["measure"].startswith("CUDA") else "peak_rss"
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, result in record["results"].items():
        ax.plot(s["nt_samples"], [r[key] / MIB for r in result["runs"]], "o-", label=name)
    ax.set_xlabel("nt_samples")
    ax.set_ylabel(f"{s['measure']} (MiB)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    save_figure(fig, path, f"Peak memory, nt_samples_batch_size {s['nt_samples_batch_size']}")


def serving_plot(record: dict[str, Any], path: Path) -> None:
    cases = record["cases"]
    columns = min(3, len(cases))
    grid = -(-len(cases) // columns)
    fig, axes = plt.subplots(grid, columns, figsize=(5 * columns, 4.5 * grid), squeeze=False)
    for ax in axes.flat[len(cases) :]:
        ax.set_visible(False)
    for ax, (name, case) in zip(axes.flat, cases.items(), strict=False):
        results = case["results"]
        ax.barh(list(results), [r["median_s"] for r in results.values()])
        ax.invert_yaxis()
        ax.set_xlabel("median latency (s)")
        ax.set_title(name, fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    save_figure(fig, path, "Latency: the model alone vs through TorchServe (ours and stock)")


PLOTTERS: dict[str, Callable[[dict[str, Any], Path], None]] = {
    "engine": engine_plot,
    "fusion": fusion_plot,
    "memory": memory_plot,
    "serving": serving_plot,
}
