"""`make report`: measure everything, keep the per-image values, write docs/quality.md + figures.

    python -m smoothexplain_quality.run [--docs docs] [--cache artifacts/quality] [--quick]
                                        [--part all|shapes|real] [--render-only]

The two parts keep their own caches: the shapes models' per-image results in
``<cache>/results.json`` (figure maps ``maps.npz``), the pretrained networks' per-photo results
in ``<cache>/real.json`` (``real-maps.npz``). ``--part`` chooses what to measure; the report is
then rendered from every cache present, so re-measuring one part never recomputes the other,
and ``--render-only`` measures nothing.
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
from .real import REAL_FULL, REAL_QUICK, RealPlan, measure_real
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


def _save(results: Mapping[str, object], maps: Mapping[str, np.ndarray], json_file: Path) -> None:
    json_file.parent.mkdir(parents=True, exist_ok=True)
    json_file.write_text(json.dumps(results) + "\n")
    np.savez_compressed(_maps_file(json_file), allow_pickle=False, **maps)


def _maps_file(json_file: Path) -> Path:
    return json_file.with_name("maps.npz" if json_file.name == "results.json" else "real-maps.npz")


def _load(json_file: Path) -> tuple[dict[str, object], dict[str, np.ndarray]] | None:
    if not json_file.is_file():
        return None
    with np.load(_maps_file(json_file)) as stored:
        maps = {name: stored[name] for name in stored.files}
    return json.loads(json_file.read_text()), maps


def build(
    plan: Plan | None,
    docs: Path,
    cache: Path,
    demo: Path,
    *,
    render_only: bool = False,
    real: RealPlan | None = None,
) -> Path:
    """Measure the shapes part with `plan` and the pretrained part with `real` (each skipped
    when None, both when `render_only`), keep the results in `cache`, render `docs` from every
    part's cache."""
    shapes_file, real_file = cache / "results.json", cache / "real.json"
    if not render_only and plan is not None:
        _save(*measure(plan, cache, demo), shapes_file)
    if not render_only and real is not None:
        _save(*measure_real(real, checkpoint=cache / "real-networks"), real_file)
    from .report import render  # matplotlib is imported only when rendering

    shapes = _load(shapes_file)
    if shapes is None and not real_file.is_file():
        raise FileNotFoundError(f"nothing measured in {cache}: run without --render-only first")
    results, maps = shapes if shapes is not None else (None, None)
    return render(results, maps, docs, real=_load(real_file))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=Path, default=Path("docs"))
    parser.add_argument("--cache", type=Path, default=Path("artifacts/quality"))
    parser.add_argument("--demo", type=Path, default=Path("artifacts/demo"))
    parser.add_argument("--quick", action="store_true", help="a small plan, for trying things")
    parser.add_argument("--part", choices=("all", "shapes", "real"), default="all")
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args(argv)
    shapes = (QUICK if args.quick else FULL) if args.part in ("all", "shapes") else None
    real = (REAL_QUICK if args.quick else REAL_FULL) if args.part in ("all", "real") else None
    out = build(shapes, args.docs, args.cache, args.demo, render_only=args.render_only, real=real)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
