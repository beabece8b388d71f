"""`make report`: measure everything, keep the per-image values, write docs/quality.md + figures.

    python -m smoothexplain_quality.run [--docs docs] [--cache artifacts/quality] [--quick]
                                        [--render-only]

Per-image results go to ``<cache>/results.json`` and the maps the figures show to
``<cache>/maps.npz``; ``--render-only`` rewrites the report from them without measuring again.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from torch import nn

from smoothexplain.demo.train import HELDOUT_SEED_OFFSET
from smoothexplain.engine.noise import adaptive_sigma

from .grid import Cell, Settings, bounds, cells
from .metrics import FloatArray, out_of_range
from .studies import (
    HeldOut,
    cascading_randomisation,
    convergence,
    held_out,
    pooled_maps,
    randomisation,
    score,
    sweep,
)
from .zoo import VARIANTS, Variant, load_variant

__all__ = ["FULL", "QUICK", "Plan", "build", "main", "measure"]

GRID = cells(["grad", "ixg", "ig_b", "ig_w", "gbp"], ["plain", "sg", "ag"])
GRID += cells(["grad"], ["sg_sq", "vg", "ag_sq", "avg"])
FIGURE = cells(["grad"], ["plain", "sg", "sg_sq", "vg", "ag", "avg"])
COMPARED = ("demo", "resnet")


@dataclass(frozen=True)
class Plan:
    """How much to measure; FULL is what `make report` runs (75 min on 2 shared cores)."""

    images: int = 200
    figure_images: int = 4
    sanity_images: int = 16
    sanity_bases: tuple[str, ...] = ("grad", "ixg", "ig_b", "gbp")
    sweep_images: int = 64
    convergence_images: int = 16
    convergence_samples: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)
    reference_samples: int = 1024
    repeats: int = 2
    sigmas: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.3)
    confidences: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95, 0.99)
    settings: Settings = field(default_factory=Settings)
    image_size: int = 64  # the networks pool globally, so trial runs may use smaller images
    # Shrinks the training of the non-demo models to (images, epochs, width) for trial runs
    # (held-out accuracy then comes from as many images); None: as listed in zoo.VARIANTS.
    training: tuple[int, int, int] | None = None


FULL = Plan()
QUICK = Plan(
    images=24,
    figure_images=3,
    sanity_images=4,
    sweep_images=8,
    convergence_images=4,
    convergence_samples=(1, 4, 16),
    reference_samples=64,
    repeats=1,
    sigmas=(0.1, 0.15),
    confidences=(0.9, 0.95),
    settings=Settings(nt_samples=8, ig_nt_samples=2, ig_steps=4),
    training=(512, 1, 16),
)


def _variant(name: str, plan: Plan) -> Variant:
    variant = VARIANTS[name]
    if plan.training is None or name == "demo":
        return variant
    count, epochs, width = plan.training
    config = replace(
        variant.config,
        train_count=count,
        heldout_count=count,
        epochs=epochs,
        width=width,
        image_size=plan.image_size,
        batch_size=min(variant.config.batch_size, count),
    )
    return replace(variant, config=config)


def _sanity_cells(plan: Plan) -> list[Cell]:
    return cells(list(plan.sanity_bases), ["plain", "sg", "ag"])


def _key(cell: Cell) -> str:
    return f"{cell.base}/{cell.smoothing}"


def _lists(values: Mapping[str, np.ndarray]) -> dict[str, list[float]]:
    return {k: [float(v) for v in array] for k, array in values.items()}


def _by_key(values: Mapping[Cell, np.ndarray]) -> dict[str, list[float]]:
    return _lists({_key(cell): array for cell, array in values.items()})


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _noise(data: HeldOut, settings: Settings) -> dict[str, list[float]]:
    """Per image: share of noisy features outside the range, and AdaptGrad's mean σ / range."""
    low, high = bounds()
    x = data.inputs
    adaptive = adaptive_sigma(x, low, high, settings.confidence)
    gaussian = settings.sigma * (high - low)
    return {
        "sg_out": [float(v) for v in out_of_range(x, gaussian, low, high)],
        "ag_out": [float(v) for v in out_of_range(x, adaptive, low, high)],
        "ag_sigma": [float(v) for v in (adaptive / (high - low)).flatten(1).mean(dim=1)],
    }


def _convergence(model: nn.Module, data: HeldOut, plan: Plan) -> dict[str, object]:
    curves: dict[str, object] = {}
    for smoothing in ("sg", "ag"):
        result = convergence(
            model,
            data.head(plan.convergence_images),
            Cell("grad", smoothing),
            plan.settings,
            plan.convergence_samples,
            plan.reference_samples,
            plan.repeats,
        )
        curves[smoothing] = {
            "error": _lists({str(n): v for n, v in result.relative_error.items()}),
            "rank": _lists({str(n): v for n, v in result.rank_correlation.items()}),
        }
    return curves


def _measure_model(
    name: str, model: nn.Module, data: HeldOut, plan: Plan
) -> tuple[dict[str, object], dict[Cell, FloatArray]]:
    """All per-model studies; also returns the grid's pooled maps."""
    _log(f"[{name}] grid over {plan.images} images")
    maps = pooled_maps(model, data, GRID, plan.settings)
    grid = {_key(c): _lists(score(m, data.masks)) for c, m in maps.items()}
    _log(f"[{name}] cascading randomisation over {plan.sanity_images} images")
    reference = {cell: maps[cell][: plan.sanity_images] for cell in _sanity_cells(plan)}
    sanity = cascading_randomisation(model, reference, data.head(plan.sanity_images), plan.settings)
    _log(f"[{name}] convergence")
    curves = _convergence(model, data, plan)
    _log(f"[{name}] sigma / confidence sweep")
    swept = sweep(model, data.head(plan.sweep_images), plan.settings, plan.sigmas, plan.confidences)
    measured: dict[str, object] = {
        "grid": grid,
        "sanity": {stage: _by_key(rows) for stage, rows in sanity.items()},
        "convergence": curves,
        "sweep": {f"{kind}:{value}": _lists(scores) for (kind, value), scores in swept.items()},
    }
    return measured, maps


def measure(
    plan: Plan, cache: Path, demo_dir: Path
) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    """Run every study; returns the JSON-ready results and the maps the figures show."""
    start, cpu_start = time.perf_counter(), time.process_time()
    data = held_out(plan.images, HELDOUT_SEED_OFFSET, plan.image_size)
    figure_maps: dict[str, np.ndarray] = {
        "images": data.images[: plan.figure_images].numpy(),
        "masks": data.masks[: plan.figure_images],
    }
    models: dict[str, object] = {}
    per_model: dict[str, object] = {}
    loaded: dict[str, nn.Module] = {}
    grid_maps: dict[str, dict[Cell, FloatArray]] = {}
    for name in (*COMPARED, "nonoise", "randlabels"):
        loaded[name], meta = load_variant(_variant(name, plan), cache, demo_dir)
        models[name] = {"label": VARIANTS[name].label, "meta": meta}
    for name in COMPARED:
        per_model[name], grid_maps[name] = _measure_model(name, loaded[name], data, plan)
        for cell in FIGURE:
            figure_maps[f"{name}:{_key(cell)}"] = grid_maps[name][cell][: plan.figure_images]
    _log("[nonoise] the demo network trained without input noise")
    nonoise = pooled_maps(
        loaded["nonoise"], data, cells(["grad"], ["plain", "sg", "ag"]), plan.settings
    )
    _log("[randlabels] data randomisation")
    reference = {c: grid_maps["demo"][c][: plan.sanity_images] for c in _sanity_cells(plan)}
    labels = randomisation(
        reference, [("labels", loaded["randlabels"])], data.head(plan.sanity_images), plan.settings
    )["labels"]
    results: dict[str, object] = {
        "meta": {
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "machine": f"{platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
            "torch": torch.__version__,
            "quantus": version("quantus"),
            "seconds": round(time.perf_counter() - start, 1),
            "cpu_seconds": round(time.process_time() - cpu_start, 1),
            "plan": asdict(plan),
            "heldout_seed": HELDOUT_SEED_OFFSET,
        },
        "mask_share": [float(m.mean()) for m in data.masks],
        "noise": _noise(data, plan.settings),
        "models": models,
        "per_model": per_model,
        "nonoise": {_key(c): _lists(score(m, data.masks)) for c, m in nonoise.items()},
        "labels": _by_key(labels),
    }
    return results, figure_maps


def build(plan: Plan, docs: Path, cache: Path, demo: Path, *, render_only: bool = False) -> Path:
    """Measure with `plan` (unless `render_only`), keep the results in `cache`, render `docs`."""
    results_file, maps_file = cache / "results.json", cache / "maps.npz"
    if not render_only:
        results, maps = measure(plan, cache, demo)
        cache.mkdir(parents=True, exist_ok=True)
        results_file.write_text(json.dumps(results) + "\n")
        np.savez_compressed(maps_file, allow_pickle=False, **maps)
    from .report import render  # matplotlib is imported only when rendering

    with np.load(maps_file) as stored:
        maps = {name: stored[name] for name in stored.files}
    return render(json.loads(results_file.read_text()), maps, docs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=Path, default=Path("docs"))
    parser.add_argument("--cache", type=Path, default=Path("artifacts/quality"))
    parser.add_argument("--demo", type=Path, default=Path("artifacts/demo"))
    parser.add_argument("--quick", action="store_true", help="a small plan, for trying things")
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    out = build(plan, args.docs, args.cache, args.demo, render_only=args.render_only)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
