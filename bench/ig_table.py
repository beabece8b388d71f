"""Markdown for bench/results/ig-sampling.json (bench/ig_sampling.py): error against passes for
each contender, and the passes joint sampling needs to match the best grid split."""

from __future__ import annotations

from typing import Any

from tables import measured_on

__all__ = ["column_order", "ig_sampling_table"]


def _label(name: str) -> str:
    if name == "joint":
        return "**joint**"
    kind, steps = name.split(" n_steps=")
    return f"{'Captum NT(IG)' if kind == 'captum' else 'grid'} n_steps={steps}"


def column_order(name: str) -> tuple[int, int]:
    """joint first, then the grid by n_steps, then Captum."""
    if name == "joint":
        return (0, 0)
    kind, steps = name.split(" n_steps=")
    return (2 if kind == "captum" else 1, int(steps))


def _errors(result: dict[str, Any]) -> list[str]:
    curves = {name: result["curves"][name] for name in sorted(result["curves"], key=column_order)}
    budgets = sorted({p["passes"] for c in curves.values() for p in c["points"]})
    lines = [
        "| passes | " + " | ".join(_label(name) for name in curves) + " |",
        "|---:|" + "---:|" * len(curves),
    ]
    for passes in budgets:
        cells = []
        for curve in curves.values():
            hit = [p for p in curve["points"] if p["passes"] == passes]
            cells.append(f"{hit[0]['corrected_error']:.3f}" if hit else "")
        lines.append(f"| {passes} | " + " | ".join(cells) + " |")
    return lines


def ig_sampling_table(record: dict[str, Any]) -> str:
    settings = record["settings"]
    lines = [
        f"{measured_on(record)}: relative L2 error of "
        f"SmoothGrad-IG (σ = {settings['sigma_fraction']} of the input range, "
        f"Gauss–Legendre for the grid) against a reference of 2 × "
        f"{settings['reference_passes_each']} joint passes, root mean square over "
        f"{settings['trials']} seeds, with the reference's own error (half the difference of "
        "its two halves) removed in quadrature.",
        "",
    ]
    comparison = [
        "| model | grid passes | best grid split | its error | joint passes to match | ratio |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for name, result in record["results"].items():
        described = settings["models"][name]
        reference = result["reference"]["relative_error"]
        lines += [
            f"*{name}*: {described}; σ = {result['stdevs']:.3f}, target class "
            f"{result['target']}, reference error {reference:.3f}.",
            "",
            *_errors(result),
            "",
        ]
        for row in result["comparison"]:
            comparison.append(
                f"| {name} | {row['grid_passes']} | {_label(row['best_split'])} | "
                f"{row['best_error']:.3f} | {row['joint_passes_needed']:.0f} | "
                f"{row['ratio']:.2f} |"
            )
    return "\n".join([*lines, *comparison])
