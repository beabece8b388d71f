"""The performance benchmarks still run against the current engine (toy sizes, `--smoke`), and
their results render into README tables and plots. Speed itself is never asserted here."""

from __future__ import annotations

import importlib
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


def _bench_modules(*names: str) -> list[Any]:
    """Modules of bench/ (a folder of scripts, not a package)."""
    sys.path.insert(0, str(BENCH))
    try:
        return [importlib.import_module(name) for name in names]
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def renderers() -> Any:
    tables, plots = _bench_modules("tables", "plots")
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


@pytest.fixture(scope="module")
def efficiency() -> Any:
    return _bench_modules("efficiency_tables", "efficiency_plots")


def test_sampling_bench_compares_every_scheme(efficiency: Any, tmp_path: Path) -> None:
    record = _run("sampling.py", tmp_path / "sampling.json")
    assert len(record["results"]) == 4  # (demo, resnet18) × (gradient, input×gradient)
    for row in record["results"].values():
        assert set(row["curves"]) == {"iid", "antithetic", "qmc"}
        assert row["passes_to_match_iid50"]["iid"] == pytest.approx(50.0)
        stop = row["adaptive_stopping"]
        assert 8 <= stop["mean_samples"] <= 200 and stop["mean_rel_l2"] > 0
    tables, plots = efficiency
    plots.sampling_plot(record, tmp_path / "sampling.png")
    assert (tmp_path / "sampling.png").read_bytes().startswith(b"\x89PNG")
    text = tables.sampling_table(record)
    assert text.count("| demo (ShapesNet 64²) / gradient |") == 2  # both tables


def test_precision_bench_reports_error_per_method(efficiency: Any, tmp_path: Path) -> None:
    record = _run("precision.py", tmp_path / "precision.json")
    for rows in record["results"].values():
        assert rows["fp32"]["rel_l2_vs_fp32"] == 0.0
        assert 0.0 < rows["bf16"]["rel_l2_vs_fp32"] < 1.0  # autocast ran, answer still close
    tables, plots = efficiency
    plots.precision_plot(record, tmp_path / "precision.png")
    assert (tmp_path / "precision.png").read_bytes().startswith(b"\x89PNG")
    assert "| guided_backprop | bf16 |" in tables.precision_table(record)


def test_ig_sampling_bench_runs_and_renders(tmp_path: Path) -> None:
    out = tmp_path / "ig-sampling.json"
    subprocess.run(
        [
            sys.executable,
            str(BENCH / "ig_sampling.py"),
            *("--out", str(out), "--plot", str(tmp_path / "ig.png"), "--models", "demo"),
            *("--trials", "1", "--reference-passes", "256", "--budgets", "100"),
            *("--joint-budgets", "25", "100", "--splits", "2", "4"),
            *("--wide-splits", "10", "--wide-budgets", "100"),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    record = json.loads(out.read_text())
    assert list(record["results"]) == ["demo"]
    assert (tmp_path / "ig.png").read_bytes().startswith(b"\x89PNG")
    (ig_table,) = _bench_modules("ig_table")
    assert "| demo |" in ig_table.ig_sampling_table(record)


def test_a_smoke_run_never_overwrites_the_committed_results() -> None:
    committed = BENCH / "results" / "precision-cpu.json"
    before = committed.read_bytes()
    smoke = BENCH.parent / "build" / "bench-smoke" / "precision-cpu.json"
    smoke.unlink(missing_ok=True)
    subprocess.run(
        [sys.executable, str(BENCH / "precision.py"), "--smoke"],
        check=True,
        capture_output=True,
        timeout=600,
    )
    assert json.loads(smoke.read_text())["settings"]["smoke"] is True
    assert committed.read_bytes() == before
