"""The performance benchmarks still run against the current engine (toy sizes, `--smoke`), and
their results render into README tables and plots. Speed itself is never asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _run(script: str, out: Path, *extra: str) -> dict[str, Any]:
    subprocess.run(
        [sys.executable, str(BENCH / script), "--smoke", "--out", str(out), *extra],
        check=True,
        capture_output=True,
        timeout=600,
    )
    record: dict[str, Any] = json.loads(out.read_text())
    assert record["settings"]["smoke"] is True
    return record


@pytest.fixture(scope="module")
def renderers() -> Any:
    sys.path.insert(0, str(BENCH))
    try:
        import plots
        import tables
    finally:
        sys.path.remove(str(BENCH))
    return tables.RENDERERS, plots.PLOTTERS


def _render(renderers: Any, name: str, record: dict[str, Any], tmp_path: Path) -> str:
    tables, plots = renderers
    plots[name](record, tmp_path / f"{name}.png")
    assert (tmp_path / f"{name}.png").read_bytes().startswith(b"\x89PNG")
    text: str = tables[name](record)
    return text


def test_the_gpu_variants_run_even_without_a_gpu(renderers: Any, tmp_path: Path) -> None:
    """`--device cuda` without CUDA is a CPU smoke run of the GPU cases, not a failure."""
    import torch

    record = _run("engine.py", tmp_path / "engine.json", "--device", "cuda")
    variants = {case["variant"] for case in record["cases"]}
    assert variants == {"tf32", "tf32+channels_last", "bf16+channels_last"}
    assert {case["method"] for case in record["cases"]} == {"gradient", "integrated_gradients"}
    for case in record["cases"]:
        results = case["results"]
        assert set(results) == {"floor", "engine", "captum_noise_tunnel"}
        assert results["floor"]["ratio_to_floor"] == 1.0
        assert all(r["median_s"] > 0 for r in results.values())
    assert record["machine"]["device"].startswith("cuda" if torch.cuda.is_available() else "cpu")
    table = _render(renderers, "engine", record, tmp_path)
    assert table.count("| bf16+channels_last |") == 2


def test_fusion_bench_answers_as_one_at_a_time(renderers: Any, tmp_path: Path) -> None:
    record = _run("fusion.py", tmp_path / "fusion.json")
    assert [case["k"] for case in record["cases"]] == [1, 4]
    for case in record["cases"]:
        assert case["max_abs_difference"] == 0.0  # fusion must not change any answer
        assert case["throughput_ratio"] > 0
    assert "| 4 | 8 |" in _render(renderers, "fusion", record, tmp_path)


def test_memory_bench_measures_each_setting_in_its_own_process(
    renderers: Any, tmp_path: Path
) -> None:
    record = _run("memory.py", tmp_path / "memory.json")
    for result in record["results"].values():
        runs = result["runs"]
        assert [r["nt_samples"] for r in runs] == [4, 8]
        assert all(r["peak_rss"] >= r["rss_before"] > 0 for r in runs)
        assert result["peak_ratio"] == runs[-1]["peak_rss"] / runs[0]["peak_rss"]
    assert "peak at 8 / peak at 4" in _render(renderers, "memory", record, tmp_path)
