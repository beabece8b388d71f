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
    assert {case["model"] for case in record["cases"]} == {"resnet18", "efficientnet_lite0"}
    table = _render(renderers, "engine", record, tmp_path)
    assert table.count("| bf16+channels_last |") == 4  # ResNet and EfficientNet-Lite0


CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_the_photograph_is_a_cat_to_the_pretrained_lite0() -> None:
    """The benchmarks' real input: torchvision's ImageNet preprocessing of the cat photograph,
    which the pretrained EfficientNet-Lite0 calls a cat (the smoke runs use it at 32²)."""
    import torch

    (lite0,) = _bench_modules("lite0")
    x = lite0.cat_tensor()
    assert x.shape == (1, 3, 224, 224)
    with torch.no_grad():
        top = lite0.lite0(torch.device("cpu"))(x).softmax(dim=1)[0].topk(3)
    assert set(top.indices.tolist()) <= CATS
    assert lite0.categories()[int(top.indices[0])] == "Egyptian cat"


def test_engine_bench_runs_lite0_and_keeps_the_other_rows(renderers: Any, tmp_path: Path) -> None:
    """`--models efficientnet_lite0` measures the pretrained network on the photograph and
    merges its rows into an existing result: the other rows stay, with their own date."""
    import torch

    earlier = json.loads((BENCH / "results" / "engine-cpu.json").read_text())
    earlier["settings"]["smoke"] = True  # a smoke run merges only with smoke results
    out = tmp_path / "engine.json"
    out.write_text(json.dumps(earlier))
    record = _run("engine.py", out, "--models", "efficientnet_lite0")
    lite = [case for case in record["cases"] if case["model"] == "efficientnet_lite0"]
    assert [case["method"] for case in lite] == ["gradient", "integrated_gradients", "grad_cam"]
    (lite0,) = _bench_modules("lite0")
    for case in lite:
        assert case["weights"].startswith("pretrained") and "cat photograph" in case["input"]
        assert case["target_label"] == lite0.categories()[case["target"]]
        assert set(case["results"]) == {
            "floor",
            "engine",
            "engine_channels_last",
            "engine_auto",
            "engine_served",
            "captum_noise_tunnel",
        }
        assert 0 < case["channels_last_rel_l2"] < 1e-2  # other kernels, the same map
        assert 0 < case["served_rel_l2"] < 1e-2 and case["batchnorms_folded"] == 49
        assert case["auto_chose"] in ("contiguous", "channels_last")
        machine = case["machine"]
        assert machine["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
        assert "native low precision" in machine["cpu_support"]
        assert machine["date"] == record["machine"]["date"] and "load_average_1m_end" in machine
    kept = [case for case in record["cases"] if case["model"] != "efficientnet_lite0"]
    stamp = {"machine": earlier["machine"], "settings": earlier["settings"]}
    assert kept == [
        {**stamp, **case} for case in earlier["cases"] if case["model"] != "efficientnet_lite0"
    ]
    table = _render(renderers, "engine", record, tmp_path)
    assert "| efficientnet_lite0 32² | gradient | fp32 |" in table
    assert "| efficientnet_lite0 32² | grad_cam | fp32 |" in table
    assert table.count("| resnet") == sum(c["model"].startswith("resnet") for c in kept)
    assert f"Measured {kept[0]['machine']['date'][:10]}" in table  # the kept rows' own run
    assert f"measured {record['machine']['date'][:10]}" in table


@pytest.mark.integration  # starts a real TorchServe (Java 17)
def test_serving_bench_serves_lite0_beside_stock_torchserve(renderers: Any, tmp_path: Path) -> None:
    """Our archive and the stock `image_classifier` one of the same pretrained weights, in one
    TorchServe: the same IG map and the same top-5 from both, the stock answers far larger."""
    record = _run("serving.py", tmp_path / "serving.json", "--models", "efficientnet_lite0")
    cases = record["cases"]
    assert list(cases) == ["se_lite0", "peer_ig_lite0", "predict_lite0"]
    assert cases["se_lite0"]["target"] in CATS
    assert cases["se_lite0"]["results"]["grpc_float32"]["relative_l2_to_engine"] < 1e-5
    peer, predict = cases["peer_ig_lite0"]["results"], cases["predict_lite0"]["results"]
    stock = peer["stock_torchserve_captum_ig"]
    assert stock["relative_l2_to_engine"] < 1e-4 and stock["compared_with"]
    assert stock["response_bytes"] > 4 * peer["rest_json_float32"]["response_bytes"]
    assert set(predict) == {
        "forward_alone",
        "rest_raw_predict",
        "grpc_predict",
        "stock_torchserve_rest_predict",
        "stock_torchserve_grpc_predict",
    }
    assert all(r["relative_l2_to_engine"] < 1e-5 for r in predict.values())
    assert predict["grpc_predict"]["outside_engine_ms"] > 0  # worker reported its predict time
    table = _render(renderers, "serving", record, tmp_path)
    assert "**peer**, predictions: EfficientNet-Lite0" in table
    assert "| **stock TorchServe** `image_classifier` gRPC `Predictions` |" in table


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


def test_admission_bench_judges_the_pretrained_lite0(tmp_path: Path) -> None:
    """`make model`'s Lite0 archive through the data plane: every request is estimated before
    it runs (the start-up probe covers the first), the cat stays a cat, and a tight memory
    budget lowers the rows per call to what fits by the probed bytes per row."""
    store = BENCH.parent / "model_store"
    assert (store / "efficientnet_lite0.mar").is_file(), "run `make model` first"
    out = tmp_path / "admission.json"
    _run("admission_lite0.py", out, "--store", str(store))
    record = json.loads(out.read_text())
    assert all(run["estimate_s"] and run["estimate_s"] > 0 for run in record["runs"])
    assert all(run["measured_s"] > 0 and run["top1"] for run in record["runs"])
    assert record["runs"][1]["rows"] == 4 and record["runs"][1]["rows_per_call"] == 4
    budget = record["tight_budget_mib"]
    for run in record["tight_runs"]:
        assert run["rows_per_call"] == int(budget // run["row_mib"]) < run["rows"]
        assert run["calls"] == -(-run["rows"] // run["rows_per_call"])
    assert f"memory_budget_mb: {budget}" in out.with_suffix(".md").read_text()


def test_levers_bench_measures_each_lever_against_the_floor(tmp_path: Path) -> None:
    """`levers.py --smoke`: every lever but torch.compile (minutes of compile) on Lite0 at 32²,
    each with its map change against the NCHW floor, rendered into its table."""
    record = _run("levers.py", tmp_path / "levers.json", "--no-compile")
    (case,) = record["cases"]
    assert case["model"] == "efficientnet_lite0" and case["batchnorms_folded"] == 49
    assert set(case["results"]) == {
        "floor",
        "channels_last",
        "folded",
        "folded_channels_last",
        "folded_channels_last_implicit_bf16",
    }
    change = case["map_change"]
    assert change["floor"] == 0.0
    assert all(0 < change[k] < 1e-2 for k in ("channels_last", "folded", "folded_channels_last"))
    assert change["folded_channels_last_implicit_bf16"] < 0.2  # bf16 rounding, still the map
    (levers_report,) = _bench_modules("levers_report")
    table = levers_report.levers_table(record)
    assert "| efficientnet_lite0 32² | folded + channels_last (served) |" in table
    levers_report.levers_plot(record, tmp_path / "levers.png")
    assert (tmp_path / "levers.png").read_bytes().startswith(b"\x89PNG")


_BLOCKER = """
import sys
from importlib.abc import MetaPathFinder


class _Absent(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"captum", "efficientnet_lite_pytorch"}:
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None


sys.meta_path.insert(0, _Absent())
"""


def test_the_gpu_script_runs_with_what_a_machine_has(tmp_path: Path) -> None:
    """bench/gpu_selfcontained.sh on a Python without Captum or the Lite packages (as on a CUDA
    machine with its own torch and no registry): no install, the rows it can run, and what it
    lacked recorded. SMOKE=1: toy sizes, on this CPU."""
    absent = tmp_path / "absent"
    absent.mkdir()
    (absent / "sitecustomize.py").write_text(_BLOCKER)
    out = tmp_path / "out"
    environment = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    environment |= {"SMOKE": "1", "PYTHONPATH": str(absent), "PYTHON": sys.executable}
    subprocess.run(
        ["bash", str(BENCH / "gpu_selfcontained.sh"), str(out)],
        check=True,
        capture_output=True,
        timeout=900,
        env=environment,
    )
    engine = json.loads((out / "engine-cuda.json").read_text())
    lacks = " ".join(engine["settings"]["missing"])
    assert "captum" in lacks and "efficientnet_lite_pytorch" in lacks
    assert {case["model"] for case in engine["cases"]} == {"resnet18"}  # smoke: ResNets only
    variants = {case["variant"] for case in engine["cases"]}
    assert variants == {"tf32", "tf32+channels_last", "bf16+channels_last"}
    assert all("captum_noise_tunnel" not in case["results"] for case in engine["cases"])
    fusion = json.loads((out / "fusion-cuda.json").read_text())
    assert fusion["settings"]["layout"] == "served" and fusion["cases"]
    (table,) = _bench_modules("tables")
    assert "Not measured, the machine lacking it: captum" in table.engine_table(engine)
