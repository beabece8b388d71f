"""The pretrained-network study: EfficientNet-Lite0/1/2 on the shipped photographs.

Every photo is explained for the network's own top-1 class, with every cell of the grid at our
defaults and the smoothed cells again at the AdaptGrad paper's settings. Per photo it keeps the
Sparseness, the deletion and insertion areas (and a random order's), and, on one network, the
cascading-randomisation correlations. Smoothed IG uses joint (noise, α) sampling.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.transforms.functional import gaussian_blur  # type: ignore[import-untyped]

from smoothexplain.engine.noise import adaptive_sigma

from .faithfulness import area, curve, order, random_order
from .grid import Cell, Settings, attribute, cells
from .metrics import FloatArray, out_of_range, pool, spearman
from .networks import NETWORKS, categories, imagenet_bounds, load_network, preprocess
from .photos import PHOTOS, load_photo
from .randomize import cascade_groups
from .sparseness import sparseness

__all__ = [
    "FIGURE_KEYS",
    "OURS_ONLY",
    "REAL_FULL",
    "REAL_GRID",
    "REAL_QUICK",
    "RealPlan",
    "cascade_steps",
    "measure_real",
]

REAL_GRID = cells(["grad", "ixg", "ig_b", "ig_w", "gbp"], ["plain", "sg", "ag"])
REAL_GRID += cells(["grad"], ["sg_sq", "vg", "ag_sq", "avg"])
# The CAMs beside the gradient maps (deletion / insertion; Smooth Grad-CAM++ = gcampp/sg).
REAL_GRID += cells(["gcam", "gcampp"], ["plain", "sg", "ag"])
# Our adaptive forms of SmoothGrad² and VarGrad are not in the paper: measured at our defaults only.
OURS_ONLY = ("ag_sq", "avg")
FIGURE_KEYS = ("grad/plain", "grad/sg", "grad/ag", "gbp/plain", "ig_b/plain", "gcampp/sg")
Log = Callable[[str], None]

# 25 rows per pass keep Lite2's 260² activations (forward + backward) to a few GB.
_OURS = Settings(
    nt_samples=50, ig_nt_samples=50, ig_steps=16, ig_sampling="joint", rows_per_pass=25
)
# The paper: SmoothGrad α = 0.2, N = 50; AdaptGrad c = 0.95 in its Eq. 13, which divides by
# √2·erfinv((1 + c)/2): our √2·erfinv(c′) at c′ = (1 + 0.95)/2 = 0.975 exactly.
_PAPER = replace(_OURS, sigma=0.2, confidence=0.975)


@dataclass(frozen=True)
class RealPlan:
    """How much the pretrained study measures; REAL_FULL is what `make report-real` runs."""

    networks: tuple[str, ...] = tuple(NETWORKS)
    photos: tuple[str, ...] = tuple(PHOTOS)
    figure_photos: tuple[str, ...] = ("chelsea", "coffee", "flower")
    ours: Settings = field(default_factory=lambda: _OURS)
    paper: Settings = field(default_factory=lambda: _PAPER)
    curve_steps: int = 16
    random_orders: int = 4
    sanity_network: str = "lite0"
    sanity_keys: tuple[str, ...] = ("grad/plain", "grad/sg", "grad/ag", "gbp/plain", "ig_b/plain")
    sanity_samples: int = 16  # noise samples of the smoothed maps in the cascade
    blocks_per_step: int = 4  # MBConv blocks re-initialised per cascade step
    blur_sigma: float = 10.0  # the insertion baseline's Gaussian blur, in pixels


REAL_FULL = RealPlan()
REAL_QUICK = RealPlan(
    networks=("lite0",),
    photos=("chelsea", "coffee"),
    figure_photos=("chelsea", "coffee"),
    ours=replace(_OURS, nt_samples=4, ig_nt_samples=4, ig_steps=4),
    paper=replace(_PAPER, nt_samples=4, ig_nt_samples=4, ig_steps=4),
    curve_steps=8,
    random_orders=1,
    sanity_samples=2,
    blocks_per_step=8,
)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _key(cell: Cell) -> str:
    return f"{cell.base}/{cell.smoothing}"


def _floats(values: FloatArray | Sequence[float]) -> list[float]:
    return [float(v) for v in values]


def cascade_steps(model: nn.Module, blocks_per_step: int) -> list[list[str]]:
    """EfficientNet's cascade from the logits down: the classifier, the head convolution, the
    MBConv blocks `blocks_per_step` at a time, and the stem."""
    count = sum(1 for _ in model.get_submodule("_blocks").children())
    blocks = [f"_blocks.{i}" for i in reversed(range(count))]
    steps = [["_fc"], ["_bn1", "_conv_head"]]
    steps += [blocks[i : i + blocks_per_step] for i in range(0, count, blocks_per_step)]
    return [*steps, ["_bn0", "_conv_stem"]]


@dataclass(frozen=True)
class _Photos:
    inputs: torch.Tensor  # (N, 3, S, S), normalised
    crops: np.ndarray  # (N, S, S, 3) uint8
    targets: torch.Tensor  # (N,) the network's top-1 class
    probabilities: torch.Tensor  # (N,) its softmax probability


def _photos(model: nn.Module, names: Sequence[str], size: int) -> _Photos:
    prepared = [preprocess(load_photo(name), size) for name in names]
    inputs = torch.stack([x for x, _ in prepared])
    with torch.no_grad():
        probabilities, targets = model(inputs).softmax(dim=1).max(dim=1)
    return _Photos(inputs, np.stack([c for _, c in prepared]), targets, probabilities)


def _faithfulness(
    model: nn.Module, photos: _Photos, maps: FloatArray, plan: RealPlan
) -> dict[str, list[float]]:
    """Per photo: deletion (to the mean colour) and insertion (from a blur) areas of `maps`."""
    deletion, insertion = [], []
    for i, (x, target) in enumerate(zip(photos.inputs, photos.targets, strict=True)):
        blurred = _blurred(x, plan.blur_sigma)
        ranked = order(maps[i])
        score = _probability(model, int(target))
        deletion.append(area(curve(score, x, torch.zeros_like(x), ranked, plan.curve_steps)))
        insertion.append(area(curve(score, blurred, x, ranked, plan.curve_steps)))
    return {"deletion": deletion, "insertion": insertion}


def _random(model: nn.Module, photos: _Photos, plan: RealPlan) -> dict[str, list[float]]:
    """The same areas for random orders (mean over `plan.random_orders` seeds per photo)."""
    pixels = int(photos.inputs.shape[-1] * photos.inputs.shape[-2])
    deletion, insertion = [], []
    for x, target in zip(photos.inputs, photos.targets, strict=True):
        blurred, score = _blurred(x, plan.blur_sigma), _probability(model, int(target))
        orders = [random_order(pixels, seed) for seed in range(plan.random_orders)]
        zero = torch.zeros_like(x)
        deletion.append(
            float(np.mean([area(curve(score, x, zero, o, plan.curve_steps)) for o in orders]))
        )
        insertion.append(
            float(np.mean([area(curve(score, blurred, x, o, plan.curve_steps)) for o in orders]))
        )
    return {"deletion": deletion, "insertion": insertion}


def _blurred(x: torch.Tensor, sigma: float) -> torch.Tensor:
    kernel = 2 * round(3 * sigma) + 1
    blurred: torch.Tensor = gaussian_blur(x.unsqueeze(0), [kernel, kernel], [sigma, sigma])[0]
    return blurred


def _probability(model: nn.Module, target: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def score(batch: torch.Tensor) -> torch.Tensor:
        probabilities: torch.Tensor = model(batch).softmax(dim=1)[:, target]
        return probabilities

    return score


def _noise(photos: _Photos, settings: Settings) -> dict[str, list[float]]:
    """Per photo: share of noisy features outside the range, and AdaptGrad's mean σ / range."""
    low, high = imagenet_bounds()
    x = photos.inputs
    adaptive = adaptive_sigma(x, low, high, settings.confidence)
    return {
        "sg_out": _floats(out_of_range(x, settings.sigma * (high - low), low, high)),
        "ag_out": _floats(out_of_range(x, adaptive, low, high)),
        "ag_sigma": _floats((adaptive / (high - low)).flatten(1).mean(dim=1).numpy()),
    }


def _sanity(
    model: nn.Module, photos: _Photos, plan: RealPlan, log: Log
) -> dict[str, dict[str, list[float]]]:
    """Spearman ρ of each sanity cell's map, trained vs each cascade step, per photo."""
    settings = replace(plan.ours, nt_samples=plan.sanity_samples)
    limits = imagenet_bounds()
    keyed = {key: Cell(*key.split("/")) for key in plan.sanity_keys}

    def maps(network: nn.Module) -> dict[str, FloatArray]:
        return {
            key: pool(attribute(network, photos.inputs, photos.targets, cell, settings, limits))
            for key, cell in keyed.items()
        }

    reference = maps(model)
    result: dict[str, dict[str, list[float]]] = {}
    for name, changed in cascade_groups(model, cascade_steps(model, plan.blocks_per_step)):
        start = time.perf_counter()
        result[name] = {k: _floats(spearman(reference[k], m)) for k, m in maps(changed).items()}
        log(f"  randomised down to {name:<12} {time.perf_counter() - start:6.1f} s")
    return result


def _grid(
    model: nn.Module,
    photos: _Photos,
    settings: Settings,
    grid: Sequence[Cell],
    plan: RealPlan,
    log: Log,
) -> tuple[dict[str, dict[str, list[float]]], dict[str, FloatArray]]:
    limits = imagenet_bounds()
    scores: dict[str, dict[str, list[float]]] = {}
    pooled: dict[str, FloatArray] = {}
    for cell in grid:
        start = time.perf_counter()
        maps = pool(attribute(model, photos.inputs, photos.targets, cell, settings, limits))
        pooled[_key(cell)] = maps
        scores[_key(cell)] = {
            "sparseness": _floats(sparseness(maps)),
            **_faithfulness(model, photos, maps, plan),
        }
        log(f"  {cell.label:<16} {len(photos.targets)} photos {time.perf_counter() - start:6.1f} s")
    return scores, pooled


def _measure_network(
    name: str, plan: RealPlan, log: Log
) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    start = time.perf_counter()
    network = NETWORKS[name]
    model = load_network(name)
    photos = _photos(model, plan.photos, network.size)
    names = categories()
    log(f"[{name}] grid at our defaults over {len(plan.photos)} photos")
    ours, pooled = _grid(model, photos, plan.ours, REAL_GRID, plan, log)
    log(f"[{name}] smoothed cells at the paper's settings")
    smoothed = [c for c in REAL_GRID if c.smoothing not in ("plain", *OURS_ONLY)]
    paper, _ = _grid(model, photos, plan.paper, smoothed, plan, log)
    measured: dict[str, object] = {
        "label": network.label,
        "size": network.size,
        "top1": [
            {"class": int(t), "name": names[int(t)], "probability": float(p)}
            for t, p in zip(photos.targets, photos.probabilities, strict=True)
        ],
        "ours": ours,
        "paper": paper,
        "random": _random(model, photos, plan),
        "noise": {"ours": _noise(photos, plan.ours), "paper": _noise(photos, plan.paper)},
    }
    if name == plan.sanity_network:
        log(f"[{name}] cascading randomisation")
        measured["sanity"] = _sanity(model, photos, plan, log)
    measured["seconds"] = round(time.perf_counter() - start, 1)
    shown = [plan.photos.index(p) for p in plan.figure_photos if p in plan.photos]
    figure = {f"{name}:photo": photos.crops[shown]}
    figure |= {f"{name}:{key}": pooled[key][shown] for key in FIGURE_KEYS}
    return measured, figure


def _plan_key(plan: RealPlan) -> str:
    return json.dumps(asdict(plan), sort_keys=True)


def _finished(
    checkpoint: Path | None, name: str, plan: RealPlan
) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """A network an earlier, cut-off run of the same plan finished, from its checkpoint."""
    if checkpoint is None:
        return None
    entry, arrays = checkpoint / f"real-{name}.json", checkpoint / f"real-{name}.npz"
    if not (entry.is_file() and arrays.is_file()):
        return None
    saved = json.loads(entry.read_text())
    if saved.get("plan") != _plan_key(plan):
        return None
    with np.load(arrays) as maps:
        return saved, {key: maps[key] for key in maps.files}


def _checkpoint(
    checkpoint: Path | None, name: str, saved: dict[str, Any], maps: dict[str, np.ndarray]
) -> None:
    if checkpoint is None:
        return
    checkpoint.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(checkpoint / f"real-{name}.npz", allow_pickle=False, **maps)
    (checkpoint / f"real-{name}.json").write_text(json.dumps(saved) + "\n")


def measure_real(
    plan: RealPlan, log: Log = _stderr, checkpoint: Path | None = None
) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    """Run the study; returns the JSON-ready results and the maps the figures show. With a
    `checkpoint` folder each network's results are kept there as it finishes, and a network
    an earlier run of the same plan finished is read back instead of measured again (its
    seconds still counted)."""
    per_network: dict[str, object] = {}
    figure: dict[str, np.ndarray] = {}
    seconds = cpu_seconds = 0.0
    for name in plan.networks:
        found = _finished(checkpoint, name, plan)
        if found is None:
            start, cpu_start = time.perf_counter(), time.process_time()
            result, maps = _measure_network(name, plan, log)
            saved: dict[str, Any] = {
                "plan": _plan_key(plan),
                "result": result,
                "seconds": time.perf_counter() - start,
                "cpu_seconds": time.process_time() - cpu_start,
            }
            _checkpoint(checkpoint, name, saved, maps)
        else:
            saved, maps = found
            log(f"[{name}] read back from {checkpoint} (finished by an earlier run)")
        per_network[name] = saved["result"]
        seconds, cpu_seconds = seconds + saved["seconds"], cpu_seconds + saved["cpu_seconds"]
        figure |= maps
    results: dict[str, object] = {
        "meta": {
            "seconds": round(seconds, 1),
            "cpu_seconds": round(cpu_seconds, 1),
            "torch_threads": torch.get_num_threads(),
            "plan": asdict(plan),
        },
        "photos": list(plan.photos),
        "figure_photos": [p for p in plan.figure_photos if p in plan.photos],
        "credits": {name: PHOTOS[name].credit for name in plan.photos},
        "per_network": per_network,
    }
    return results, figure
