"""Tables (docs/benchmarks.md) for the sample-efficiency and mixed-precision results
(issue 7 items 4 and 5)."""

from __future__ import annotations

from typing import Any

from tables import measured_on

__all__ = ["precision_table", "sampling_table"]


def sampling_table(record: dict[str, Any]) -> str:
    settings = record["settings"]
    lines = [
        f"{measured_on(record)}: {settings['inputs']} inputs × {settings['reps']} seeds "
        f"per point, reference = {settings['reference']} iid passes (its own relative error in "
        "the last column). Passes each scheme needs to reach the relative L2 error of iid at 50 "
        "passes (log-log interpolation; fewer is better), and adaptive stopping with that error "
        "as its tolerance.",
        "",
        "| model / method | iid | antithetic | QMC | adaptive stop: mean passes (error) | "
        "error of iid@50 | reference error |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in record["results"].items():
        match, stop = row["passes_to_match_iid50"], row["adaptive_stopping"]
        cells = [
            f"{match[s]:.1f}" if match[s] is not None else "> 50"
            for s in ("iid", "antithetic", "qmc")
        ]
        iid50 = row["curves"]["iid"]["50"]["rel_l2"]
        lines.append(
            f"| {name} | {' | '.join(cells)} | {stop['mean_samples']:.1f} "
            f"({stop['mean_rel_l2']:.3f}) | {iid50:.3f} | "
            f"{row['reference_rel_error']:.3f} |"
        )
    lines += [
        "",
        "Error and rank correlation with the reference at 25 and 50 passes "
        "(iid / antithetic / QMC):",
        "",
        "| model / method | rel. L2 at 25 | rel. L2 at 50 | Spearman ρ at 25 | Spearman ρ at 50 |",
        "|---|---|---|---|---|",
    ]
    for name, row in record["results"].items():
        curves = row["curves"]

        def cell(n: str, key: str, curves: dict[str, Any] = curves) -> str:
            return " / ".join(f"{curves[s][n][key]:.3f}" for s in ("iid", "antithetic", "qmc"))

        lines.append(
            f"| {name} | {cell('25', 'rel_l2')} | {cell('50', 'rel_l2')} | "
            f"{cell('25', 'spearman')} | {cell('50', 'spearman')} |"
        )
    return "\n".join(lines)


def precision_table(record: dict[str, Any]) -> str:
    settings = record["settings"]
    lines = [
        f"{measured_on(record)}: {settings['model']} at {settings['size']}², nt_samples "
        f"{settings['nt_samples']}, rows per pass {settings['nt_samples_batch_size']}, IG with "
        f"{settings['ig_n_steps']} steps, same seed for every precision, median of "
        f"{settings['repeats']} interleaved runs.",
        "",
        "| method | precision | median s | speed-up vs fp32 | relative L2 error vs fp32 "
        "| fp32 with another seed (Monte-Carlo spread) |",
        "|---|---|---|---|---|---|",
    ]
    for method, rows in record["results"].items():
        for precision, row in rows.items():
            spread = row.get("rel_l2_other_seed")
            lines.append(
                f"| {method} | {precision} | {row['median_s']:.2f} | "
                f"{row['speedup_vs_fp32']:.2f}× | {row['rel_l2_vs_fp32']:.4f} | "
                f"{'—' if spread is None else f'{spread:.4f}'} |"
            )
    return "\n".join(lines)
