"""Render bench/results/*.json into the README between `<!-- bench:NAME -->` markers, and each
performance result into a plot beside it (bench/results/NAME.png)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from efficiency_tables import precision_table, sampling_table
from ig_table import ig_sampling_table
from plots import PLOTTERS
from tables import RENDERERS

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DEVICES = ("cpu", "cuda")
# Results that are not timings (no device suffix; the benchmark writes its own plot).
UNTIMED = {
    "ig-sampling": ig_sampling_table,
    "sampling": sampling_table,
    "precision": precision_table,
}


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()
    for base, render in RENDERERS.items():
        for device in DEVICES:
            name = f"{base}-{device}"
            path = RESULTS / f"{name}.json"
            if not path.is_file():
                continue
            record = json.loads(path.read_text())
            table = render(record)
            pattern = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.S)
            text = pattern.sub(lambda m, t=table: m.group(1) + t + "\n" + m.group(2), text)
            PLOTTERS[base](record, RESULTS / f"{name}.png")
    for name, render in UNTIMED.items():
        path = RESULTS / f"{name}.json"
        if path.is_file():
            table = render(json.loads(path.read_text()))
            pattern = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.S)
            text = pattern.sub(lambda m, t=table: m.group(1) + t + "\n" + m.group(2), text)
    readme.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
