"""Smoothed IG error against model passes: joint (noise, α) sampling vs the nested grid.

For each model, a reference map E_ε[IG(x + ε)] is estimated twice, independently, with many
passes; the mean of the two is the reference and half their difference estimates its own error.
Every contender — joint sampling, our grid rule at several n_noise × n_steps splits and Captum's
NoiseTunnel(IntegratedGradients) — is run at several pass budgets over a few seeds, and its
relative L2 error ‖estimate − reference‖/‖reference‖ is reported (root mean square over seeds).
Then, for each grid budget, the passes joint sampling needs to reach the best grid split's error
are read off the joint curve (log-log interpolation).

Passes are model rows (one forward + backward of one input); the convergence-delta endpoints
are not requested, so every contender spends exactly its budget.
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from captum.attr import IntegratedGradients, NoiseTunnel
from common import machine, write
from ig_table import column_order
from torch import nn

from smoothexplain import demo, explain

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _star(size: int) -> torch.Tensor:
    """The demo data set's star image (seed 3) as (3, size, size) floats in [0, 1]."""
    image, _ = demo.render_sample(label=5, seed=3, size=size)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


@dataclass(frozen=True)
class Case:
    model: nn.Module
    x: torch.Tensor  # (1, 3, H, W), model-input units
    span: float  # input range; σ = --sigma × span
    baseline: torch.Tensor  # (1, 3, H, W)
    described: str


def _demo_case(artifacts: Path) -> Case:
    """The trained demo CNN, σ from its declared input range (as served), baseline 0 (grey)."""
    low, high = demo.input_bounds()
    x = demo.normalize(_star(64)).unsqueeze(0)
    return Case(
        demo.load_model(artifacts),
        x,
        sum(h - lo for lo, h in zip(low, high, strict=True)) / len(low),
        torch.zeros_like(x),
        "smoothexplain demo CNN (trained), 64×64 star image, baseline 0 (mid-grey)",
    )


def _resnet_case(size: int, black: bool) -> Case:
    """ResNet-18 with seeded random weights on the ImageNet-normalised star.

    At initialisation its convolutions have no bias and its BatchNorms are identities, so the
    network is positively homogeneous: ∂F/∂x(αx) = ∂F/∂x(x) for α > 0. From baseline 0 every
    path point then has the same gradient and any n_steps is exact: the black-image baseline
    makes the path integral non-trivial.
    """
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = (_star(size).unsqueeze(0) - mean) / std
    baseline = ((0 - mean) / std).expand_as(x).clone() if black else torch.zeros_like(x)
    where = "black image (0 before normalisation)" if black else "0 (degenerate, see above)"
    return Case(
        model,
        x,
        sum(1 / s for s in IMAGENET_STD) / 3,
        baseline,
        f"torchvision ResNet-18, random weights (seed 0), {size}×{size} star image, "
        f"ImageNet normalisation, baseline {where}",
    )


def _ours(
    case: Case, target: int, stdev: float, chunk: int, sampling: str
) -> Callable[[int, int, int], torch.Tensor]:
    def run(noise_samples: int, steps: int, seed: int) -> torch.Tensor:
        attr = explain(
            case.model,
            case.x,
            target,
            method="integrated_gradients",
            nt_samples=noise_samples,
            n_steps=steps,
            ig_sampling=sampling,
            stdevs=stdev,
            seed=seed,
            baselines=case.baseline,
            nt_samples_batch_size=chunk,
        )
        assert isinstance(attr, torch.Tensor)
        return attr.double()

    return run


def _captum(
    case: Case, target: int, stdev: float, chunk: int
) -> Callable[[int, int, int], torch.Tensor]:
    tunnel = NoiseTunnel(IntegratedGradients(case.model))

    def run(noise_samples: int, steps: int, seed: int) -> torch.Tensor:
        torch.manual_seed(seed)  # Captum draws its noise from the global generator
        attr = tunnel.attribute(
            case.x,
            nt_type="smoothgrad",
            nt_samples=noise_samples,
            nt_samples_batch_size=max(1, chunk // steps),
            stdevs=stdev,
            target=target,
            baselines=case.baseline,
            n_steps=steps,
            internal_batch_size=chunk,
        )
        return attr.detach().double()

    return run


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _contenders(args: argparse.Namespace) -> dict[str, tuple[str, int, list[int]]]:
    """name → (kind, n_steps, pass budgets); kind is joint, grid or captum. The splits that can
    be the best grid split run at every budget; the others (one node: biased; many nodes: few
    noise samples), which lose by far, only at the smaller budgets, to keep the run short."""
    table: dict[str, tuple[str, int, list[int]]] = {"joint": ("joint", 1, args.joint_budgets)}
    for steps in sorted({*args.splits, *args.wide_splits}):
        budgets = args.budgets if steps in args.splits else args.wide_budgets
        table[f"grid n_steps={steps}"] = ("grid", steps, budgets)
    table[f"captum n_steps={args.captum_steps}"] = ("captum", args.captum_steps, args.wide_budgets)
    return table


def _passes_to_reach(curve: list[tuple[int, float]], error: float) -> float:
    """Passes at which the (passes, error) curve reaches `error`, interpolated in log-log;
    beyond the measured range, extrapolated with the Monte Carlo slope −1/2."""
    if error >= curve[0][1]:
        return curve[0][0] * (curve[0][1] / error) ** 2
    for (p0, e0), (p1, e1) in itertools.pairwise(curve):
        if e1 <= error <= e0 and e0 > e1:
            t = math.log(e0 / error) / math.log(e0 / e1)
            return math.exp(math.log(p0) + t * math.log(p1 / p0))
    last_p, last_e = curve[-1]
    return last_p * (last_e / error) ** 2


def run_model(name: str, case: Case, args: argparse.Namespace) -> dict[str, Any]:
    for parameter in case.model.parameters():
        parameter.requires_grad_(False)
    with torch.no_grad():
        target = int(case.model(case.x).argmax(dim=1)[0])
    stdev = args.sigma * case.span
    ours = {kind: _ours(case, target, stdev, args.chunk, kind) for kind in ("joint", "grid")}
    captum = _captum(case, target, stdev, args.chunk)
    started = time.perf_counter()
    halves = [ours["joint"](args.reference_passes, 1, 10_000 + i) for i in range(2)]
    reference = (halves[0] + halves[1]) / 2
    # ‖r₁ − r₂‖ ≈ √2·e₁ and the mean of two has error e₁/√2 = ‖r₁ − r₂‖/2.
    reference_error = _relative(halves[0], halves[1]) / 2
    reference_s = time.perf_counter() - started
    print(f"{name}: target {target}, σ {stdev:.3f}, reference error {reference_error:.4f}")
    curves: dict[str, dict[str, Any]] = {}
    for contender, (kind, steps, budgets) in _contenders(args).items():
        points = []
        for passes in budgets:
            if passes % steps:
                continue
            errors, seconds = [], 0.0
            for trial in range(args.trials):
                fn = captum if kind == "captum" else ours[kind]
                began = time.perf_counter()
                estimate = fn(passes // steps, steps, 100 * trial + passes)
                seconds += time.perf_counter() - began
                errors.append(_relative(estimate, reference))
            rms = math.sqrt(sum(e * e for e in errors) / len(errors))
            # Errors add in quadrature with the reference's own (independent) error.
            corrected = math.sqrt(max(rms**2 - reference_error**2, 0.0))
            points.append(
                {
                    "passes": passes,
                    "noise_samples": passes // steps,
                    "n_steps": steps if kind != "joint" else None,
                    "errors": errors,
                    "rms_error": rms,
                    "corrected_error": corrected,
                    "seconds_per_run": seconds / args.trials,
                }
            )
            print(f"  {contender:22s} {passes:6d} passes  error {rms:.4f}")
        curves[contender] = {"kind": kind, "n_steps": steps, "points": points}
    return {
        "target": target,
        "stdevs": stdev,
        "input": list(case.x.shape),
        "reference": {
            "passes_each": args.reference_passes,
            "halves": 2,
            "relative_error": reference_error,
            "seconds": reference_s,
        },
        "curves": curves,
        "comparison": _compare(curves),
        "seconds": time.perf_counter() - started,
    }


def _compare(curves: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per grid budget: the best grid split (ours or Captum) and the joint passes matching it."""
    joint = [(p["passes"], p["corrected_error"]) for p in curves["joint"]["points"]]
    budgets = sorted(
        {p["passes"] for c in curves.values() if c["kind"] != "joint" for p in c["points"]}
    )
    rows = []
    for budget in budgets:
        candidates = [
            (p["corrected_error"], name)
            for name, c in curves.items()
            if c["kind"] != "joint"
            for p in c["points"]
            if p["passes"] == budget
        ]
        best_error, best = min(candidates)
        needed = _passes_to_reach(joint, best_error)
        rows.append(
            {
                "grid_passes": budget,
                "best_split": best,
                "best_error": best_error,
                "joint_passes_needed": needed,
                "ratio": needed / budget,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/results/ig-sampling.json"))
    parser.add_argument("--plot", type=Path, default=Path("bench/results/ig-sampling.png"))
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/demo"))
    parser.add_argument(
        "--models",
        nargs="+",
        default=["demo", "resnet18"],
        choices=["demo", "resnet18", "resnet18-zero"],
        help="resnet18 uses the black-image baseline; resnet18-zero baseline 0 (degenerate)",
    )
    parser.add_argument("--resnet-size", type=int, default=64)
    parser.add_argument("--sigma", type=float, default=0.15, help="σ / (input max − min)")
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--reference-passes", type=int, default=4096, help="per half")
    parser.add_argument("--budgets", type=int, nargs="+", default=[100, 400, 1600])
    parser.add_argument(
        "--joint-budgets", type=int, nargs="+", default=[25, 50, 100, 200, 400, 800]
    )
    parser.add_argument("--splits", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument(
        "--wide-splits",
        type=int,
        nargs="+",
        default=[1, 10, 20],
        help="splits run at --wide-budgets only (10×10 and 20×20 are the issue's pilot)",
    )
    parser.add_argument("--wide-budgets", type=int, nargs="+", default=[100, 400])
    parser.add_argument("--captum-steps", type=int, default=50, help="Captum's default n_steps")
    parser.add_argument("--chunk", type=int, default=128, help="rows per forward + backward")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", module="captum")
    torch.set_grad_enabled(True)
    cases: dict[str, Callable[[], Case]] = {
        "demo": lambda: _demo_case(args.artifacts),
        "resnet18": lambda: _resnet_case(args.resnet_size, black=True),
        "resnet18-zero": lambda: _resnet_case(args.resnet_size, black=False),
    }
    results, described = {}, {}
    for name in args.models:
        case = cases[name]()
        described[name] = case.described
        results[name] = run_model(name, case, args)
    record = {
        "benchmark": "ig-sampling: smoothed IG relative error vs passes",
        "machine": machine(),
        "settings": {
            "models": described,
            "sigma_fraction": args.sigma,
            "nt_type": "smoothgrad",
            "ig_rule": "gausslegendre",
            "trials": args.trials,
            "reference_passes_each": args.reference_passes,
            "budgets": args.budgets,
            "joint_budgets": args.joint_budgets,
            "splits": args.splits,
            "wide_splits": args.wide_splits,
            "wide_budgets": args.wide_budgets,
            "captum_steps": args.captum_steps,
            "chunk_rows": args.chunk,
        },
        "results": results,
    }
    write(args.out, record)
    plot(record, args.plot)


def plot(record: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = record["results"]
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, (name, result) in zip(axes[0], results.items(), strict=True):
        for contender in sorted(result["curves"], key=column_order):
            curve = result["curves"][contender]
            xs = [p["passes"] for p in curve["points"]]
            ys = [p["corrected_error"] for p in curve["points"]]
            style = (
                "o-" if curve["kind"] == "joint" else ("s--" if curve["kind"] == "captum" else "^-")
            )
            ax.plot(xs, ys, style, label=contender, linewidth=2 if curve["kind"] == "joint" else 1)
        ax.axhline(
            result["reference"]["relative_error"],
            color="grey",
            linestyle=":",
            label="reference's own error",
        )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("model passes (forward + backward rows)")
        ax.set_ylabel("relative L2 error (reference's own error removed)")
        ax.set_title(f"{name}: SmoothGrad-IG, σ = {record['settings']['sigma_fraction']}·range")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
