"""Render bench/results/*.json into the README between `<!-- bench:NAME -->` markers."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LABELS = {
    "floor": "bare forward+backward floor (same rows, precomputed)",
    "engine": "smoothexplain `explain()`",
    "captum_noise_tunnel": "Captum NoiseTunnel(Saliency(abs=False))",
    "per_sample_loop": "per-sample loop (one row per pass)",
}


def engine_table(record: dict[str, object]) -> str:
    machine, settings = record["machine"], record["settings"]
    assert isinstance(machine, dict) and isinstance(settings, dict)
    results = record["results"]
    assert isinstance(results, dict)
    lines = [
        f"Measured {machine['date'][:10]} on {machine['cpu']} ({machine['cores']} cores, "
        f"torch {machine['torch']}, {machine['torch_threads']} threads): {settings['model']}, "
        f"input {settings['input']}, nt_samples {settings['nt_samples']}, "
        f"nt_samples_batch_size {settings['nt_samples_batch_size']}, median of "
        f"{settings['repeats']} interleaved runs.",
        "",
        "| contender | median s | × floor |",
        "|---|---|---|",
    ]
    for name, row in results.items():
        lines.append(
            f"| {LABELS.get(name, name)} | {row['median_s']:.3f} | {row['ratio_to_floor']:.3f} |"
        )
    return "\n".join(lines)


RENDERERS = {"engine-cpu": engine_table}


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()
    for name, render in RENDERERS.items():
        path = ROOT / "bench" / "results" / f"{name}.json"
        if not path.is_file():
            continue
        table = render(json.loads(path.read_text()))
        pattern = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.S)
        text = pattern.sub(lambda m, t=table: m.group(1) + t + "\n" + m.group(2), text)
    readme.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
