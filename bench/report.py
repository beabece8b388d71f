"""Render bench/results/*.json into the docs between `<!-- bench:NAME -->` markers, and each
result into a plot beside it (bench/results/NAME.png)."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from efficiency_plots import precision_plot, sampling_plot
from efficiency_tables import precision_table, sampling_table
from ig_table import ig_sampling_table
from levers_report import levers_plot, levers_table
from plots import PLOTTERS
from tables import RENDERERS

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs"  # docs/benchmarks.md and docs/methods.md hold the markers
DEVICES = ("cpu", "cuda")
# Every result is bench/results/NAME-DEVICE.json with a table and a plot beside it.
Record = dict[str, Any]
TABLES: dict[str, tuple[Callable[[Record], str], Callable[[Record, Path], None]]] = {
    **{name: (RENDERERS[name], PLOTTERS[name]) for name in RENDERERS},
    "sampling": (sampling_table, sampling_plot),
    "precision": (precision_table, precision_plot),
    "levers": (levers_table, levers_plot),
}


def _fill(text: str, name: str, table: str) -> str:
    """Replace the README block `<!-- bench:NAME -->` … `<!-- /bench:NAME -->` with `table`."""
    pattern = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.S)
    return pattern.sub(lambda m: m.group(1) + table + "\n" + m.group(2), text)


def _fill_everywhere(pages: dict[Path, str], name: str, table: str) -> None:
    """`_fill` in whichever page holds the `name` markers."""
    for path, text in pages.items():
        if f"<!-- bench:{name} -->" in text:
            pages[path] = _fill(text, name, table)


def main() -> int:
    pages = {path: path.read_text() for path in (ROOT / "README.md", *sorted(DOCS.glob("*.md")))}
    for base, (render, plot) in TABLES.items():
        for device in DEVICES:
            name = f"{base}-{device}"
            path = RESULTS / f"{name}.json"
            if path.is_file():
                record = json.loads(path.read_text())
                _fill_everywhere(pages, name, render(record))
                plot(record, RESULTS / f"{name}.png")
    # Smoothed-IG sampling counts passes, not seconds: one result, plotted by its benchmark.
    path = RESULTS / "ig-sampling.json"
    if path.is_file():
        _fill_everywhere(pages, "ig-sampling", ig_sampling_table(json.loads(path.read_text())))
    for page, text in pages.items():
        page.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
