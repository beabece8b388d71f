#!/usr/bin/env python3
"""Draw deploy/grafana/smoothexplain.json as a PNG from live Prometheus data, without Grafana.

No Grafana runs on these machines, so this is a stand-in for a Grafana screenshot: every panel's
targets are evaluated with Prometheus' `query_range` API exactly as the dashboard states them
(Grafana variables substituted: `$model` → `.*`, `$__rate_interval` → `--rate-interval`) and
drawn with matplotlib, one subplot per panel in the dashboard's grid order, legends filled from
each target's `legendFormat`. Colours, fonts and units are matplotlib's, not Grafana's.

    .venv/bin/python tools/render_dashboard.py --prometheus http://127.0.0.1:9090 \\
        --minutes 10 --out docs/dashboard.png
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "smoothexplain.json"
_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_SCALE = {"bytes": (2.0**20, "MiB"), "percentunit": (0.01, "%"), "s": (1.0, "s")}


def expand(expr: str, rate_interval: str = "1m") -> str:
    """A dashboard expression with Grafana's variables replaced as an "All" selection does."""
    return expr.replace("$__rate_interval", rate_interval).replace("$model", ".*")


def targets(dashboard: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(panel title, target) for every target of every panel."""
    return [(p["title"], t) for p in dashboard["panels"] for t in p.get("targets", [])]


def legend(fmt: str, labels: dict[str, str]) -> str:
    return _LEGEND.sub(lambda m: labels.get(m.group(1), ""), fmt).strip() or str(labels)


def query_range(
    prometheus: str, expr: str, start: float, end: float, step: float
) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{params}", timeout=30) as r:
        body = json.loads(r.read())
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def render(
    prometheus: str,
    out: Path,
    *,
    minutes: float = 10.0,
    rate_interval: str = "1m",
    dashboard_path: Path = DASHBOARD,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dashboard = json.loads(dashboard_path.read_text())
    panels = sorted(dashboard["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))
    end = time.time()
    start, step = end - 60 * minutes, max(1.0, 60 * minutes / 200)
    rows = math.ceil(len(panels) / 2)
    figure, axes = plt.subplots(rows, 2, figsize=(16, 3.4 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        scale, suffix = _SCALE.get(unit, (1.0, ""))
        for target in panel["targets"]:
            expr = expand(target["expr"], rate_interval)
            for series in query_range(prometheus, expr, start, end, step):
                xs = [(float(t) - end) / 60 for t, _ in series["values"]]
                ys = [float(v) / scale for _, v in series["values"]]
                ax.plot(xs, ys, label=legend(target.get("legendFormat", ""), series["metric"]))
        ax.set_title(panel["title"], fontsize=9, loc="left")
        ax.set_ylabel(suffix, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
        if ax.lines:
            ax.legend(fontsize=6, loc="upper left", ncol=2)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("minutes before the render", fontsize=8)
    figure.suptitle(
        f"{dashboard['title']} — deploy/grafana dashboard drawn from Prometheus data with "
        "matplotlib (not a Grafana screenshot)",
        fontsize=11,
    )
    figure.tight_layout(rect=(0, 0, 1, 0.98))  # room for the title
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=80)
    plt.close(figure)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate-interval", default="1m")
    parser.add_argument("--out", type=Path, default=Path("docs/dashboard.png"))
    args = parser.parse_args(argv)
    render(args.prometheus, args.out, minutes=args.minutes, rate_interval=args.rate_interval)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
