"""Render bench/results/*.json into the README between `<!-- bench:NAME -->` markers, and each
performance result into a plot beside it (bench/results/NAME.png)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from efficiency_plots import precision_plot, sampling_plot
from efficiency_tables import precision_table, sampling_table
from ig_table import ig_sampling_table
from plots import PLOTTERS
from tables import RENDERERS

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DEVICES = ("cpu", "cuda")
# Results without a device suffix, with their plot (ig-sampling's benchmark draws its own).
UNTIMED = {
    "ig-sampling": (ig_sampling_table, None),
    "sampling": (sampling_table, sampling_plot),
    "precision": (precision_table, precision_plot),
}


def _fill(text: str, name: str, table: str) -> str:
    """Replace the README block `<!-- bench:NAME -->` … `<!-- /bench:NAME -->` with `table`."""
    pattern = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.S)
    return pattern.sub(lambda m: m.group(1) + table + "\n" + m.group(2), text)


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()
    for base, render in RENDERERS.items():
        for device in DEVICES:
            name = f"{base}-{device}"
            path = RESULTS / f"{name}.json"
            if path.is_file():
                record = json.loads(path.read_text())
                text = _fill(text, name, render(record))
                PLOTTERS[base](record, RESULTS / f"{name}.png")
    for base, (render_untimed, plot) in UNTIMED.items():
        for name in (base, f"{base}-cuda"):  # the CPU result keeps the plain name
            path = RESULTS / f"{name}.json"
            if path.is_file():
                record = json.loads(path.read_text())
                text = _fill(text, name, render_untimed(record))
                if plot is not None:
                    plot(record, RESULTS / f"{name}.png")
    readme.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
