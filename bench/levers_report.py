"""Table and plot of `levers.py` (issue 17 item 4), written by `report.py`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from plots import plt, save_figure
from tables import measured_on

__all__ = ["levers_plot", "levers_table"]

LABELS = {
    "floor": "NCHW eager (floor)",
    "channels_last": "channels_last",
    "folded": "BatchNorm folded",
    "folded_channels_last": "folded + channels_last (served)",
    "folded_channels_last_compiled": "folded + channels_last + torch.compile",
    "folded_channels_last_implicit_bf16": "folded + channels_last + oneDNN implicit bf16",
}


def levers_table(record: dict[str, Any]) -> str:
    s = record["settings"]
    lines = [
        f"{measured_on(record)}, {s['repeats']} interleaved rounds. Forward + backward to the "
        f"input of {s['rows']} noisy rows (σ = {s['stdevs']}); × floor: ratio of median wall "
        "times (CPU: of the fastest rounds' CPU times); map change: relative L2 of the input "
        "gradient against the floor's, same rows.",
        "",
        "| model | lever | × floor | CPU × floor | map change |",
        "|---|---|---|---|---|",
    ]
    for case in record["cases"]:
        compiled = case.get("compile_s")
        for lever, label in LABELS.items():
            row = case["results"].get(lever)
            if row is None:
                continue
            if lever.endswith("compiled") and compiled is not None:
                label += f" (compile {compiled:.0f} s, once)"
            cpu = row.get("cpu_ratio_to_floor")
            lines.append(
                f"| {case['model']} {case['size']}² | {label} | {row['ratio_to_floor']:.3f} "
                f"| {'—' if cpu is None else f'{cpu:.3f}'} | {case['map_change'][lever]:.1e} |"
            )
    return "\n".join(lines)


def levers_plot(record: dict[str, Any], path: Path) -> None:
    cases = record["cases"]
    fig, axes = plt.subplots(1, len(cases), figsize=(5 * len(cases), 3.2), squeeze=False)
    for ax, case in zip(axes[0], cases, strict=True):
        levers = [k for k in LABELS if k in case["results"]]
        ratios = [case["results"][k]["ratio_to_floor"] for k in levers]
        ax.barh([LABELS[k] for k in levers], ratios, color="tab:blue")
        ax.axvline(1.0, color="grey", lw=0.8)
        ax.set_title(f"{case['model']} {case['size']}²", fontsize=9)
        ax.set_xlabel("× NCHW eager floor", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.invert_yaxis()
    save_figure(fig, path, "Levers below the eager floor (CPU)")
