"""Markdown tables for the performance benchmarks (engine, fusion, memory, serving).

Each renderer takes one result record (bench/results/NAME-DEVICE.json) and returns the text
that `report.py` puts between `<!-- bench:NAME-DEVICE -->` markers in docs/benchmarks.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["RENDERERS", "measured_on"]

MIB = 1024 * 1024
ENGINE_LABELS = {
    "engine": "engine",
    "engine_channels_last": "engine, channels_last",
    "engine_auto": "engine, auto",
    "engine_served": "engine, served (BN folded + channels_last)",
    "captum_noise_tunnel": "Captum NoiseTunnel",
    "per_sample_loop": "per-sample loop",
}
SERVING_LABELS = {
    "engine": "engine alone (`explain()` in the client process)",
    "rest_json_float32": "REST, JSON body, float32 answer",
    "rest_json_float16": "REST, JSON body, float16 answer",
    "rest_raw_image": "REST, raw PNG body (server defaults, float32)",
    "grpc_float32": "gRPC, float32",
    "grpc_float16": "gRPC, float16",
    "grpc_png": "gRPC, PNG heatmap only",
    "stock_torchserve_captum_ig": "**stock TorchServe** `image_classifier` `/explanations`",
    "forward_alone": "forward alone (the model in the client process, softmax top-5)",
    "rest_raw_predict": "REST `/predictions`, raw PNG body",
    "grpc_predict": "gRPC `Predictions`",
    "stock_torchserve_rest_predict": "**stock TorchServe** `image_classifier` REST `/predictions`",
    "stock_torchserve_grpc_predict": "**stock TorchServe** `image_classifier` gRPC `Predictions`",
}
SERVING_TITLES = {
    "se_resnet18": "ResNet-18 (random weights), 256² PNG → 224²",
    "shapes": "the demo model, 64² PNG",
    "peer_ig": "**peer**: ResNet-18, same weights and PNG",
    "se_lite0": "EfficientNet-Lite0 (pretrained ImageNet), the cat photograph (451×300 PNG) → 224²",
    "peer_ig_lite0": "**peer**: EfficientNet-Lite0, same weights and PNG",
    "predict_lite0": "**peer**, predictions: EfficientNet-Lite0, same weights and PNG",
}
SERVING_MODELS = {
    "resnet18": "ResNet-18",
    "shapes": "demo",
    "efficientnet_lite0": "EfficientNet-Lite0",
}


def measured_on(record: dict[str, Any]) -> str:
    m = record["machine"]
    isa = f", {m['cpu_capability']}" if m.get("cpu_capability") else ""
    where = m["cuda"] or (
        f"{m['cpu']} ({m['cores']} cores, {m['torch_threads']} torch threads{isa})"
    )
    start, end = m.get("load_average_1m"), m.get("load_average_1m_end")
    busy = f", 1-min load average {start:.1f} → {end:.1f}" if start and end else ""
    return f"Measured {m['date'][:10]} on {where}, torch {m['torch']}{busy}"


def runs_measured(
    record: dict[str, Any],
    cases: list[dict[str, Any]],
    name: Callable[[dict[str, Any]], str],
    detail: Callable[[dict[str, Any]], str],
) -> str:
    """`measured_on` of each run whose rows a record holds, with `detail` of its rows (their
    rounds): a run of some models merged into an earlier result keeps the others' rows, each
    case with its own machine record. `name` says which rows a case is, listed after each run
    when there are several."""
    runs: dict[str, list[str]] = {}
    for case in cases:
        line = measured_on({"machine": case.get("machine") or record["machine"]}) + detail(case)
        rows = runs.setdefault(line, [])
        if name(case) not in rows:
            rows.append(name(case))
    if len(runs) == 1:
        return next(iter(runs))
    parts = [f"{line} ({', '.join(rows)})" for line, rows in runs.items()]
    return "; ".join([parts[0], *(part[0].lower() + part[1:] for part in parts[1:])])


def _settings(record: dict[str, Any], case: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = case.get("settings") or record["settings"]
    return found


def _engine_inputs(record: dict[str, Any]) -> str:
    """What each model ran on: weights, input and target (older rows: in their settings)."""
    inputs: dict[str, list[str]] = {}
    for case in record["cases"]:
        settings = _settings(record, case)
        weights = case.get("weights") or settings.get("weights", "random (seed 0)")
        given = case.get("input", "randn (seed 0)")
        target = case.get("target", settings.get("target"))
        label = f" ({case['target_label']})" if case.get("target_label") else ""
        about = f"{weights} weights, input {given}, target {target}{label}"
        models = inputs.setdefault(about, [])
        if case["model"] not in models:
            models.append(case["model"])
    return "; ".join(f"{', '.join(models)}: {about}" for about, models in inputs.items())


def _ratio(row: dict[str, Any], floor: dict[str, Any]) -> str:
    """Ratio of median wall times (per-round range); ratio of the fastest CPU times."""
    rounds = row.get("round_ratios") or []
    spread = f" ({min(rounds):.2f}–{max(rounds):.2f})" if len(rounds) > 1 else ""
    cpu = ""
    if row.get("cpu_runs_s") and floor.get("cpu_runs_s"):
        cpu = f"; CPU {min(row['cpu_runs_s']) / min(floor['cpu_runs_s']):.3f}"
    return f"{row['ratio_to_floor']:.3f}{spread}{cpu}"


def _missing(record: dict[str, Any]) -> str:
    lacks = record["settings"].get("missing") or []
    return f" Not measured, the machine lacking it: {'; '.join(lacks)}." if lacks else ""


def engine_table(record: dict[str, Any]) -> str:
    cases = record["cases"]
    when = runs_measured(
        record, cases, lambda c: c["model"], lambda c: f", {c['repeats']} interleaved rounds"
    )
    lines = [
        f"{when}. σ = {record['settings']['stdevs']} absolute, smoothgrad. "
        f"{_engine_inputs(record)}. × floor: the ratio of median wall times "
        "(range of the per-round ratios in brackets); *CPU*: the ratio of the fastest rounds' "
        "CPU times of the process (all threads), which other processes on a shared machine "
        "disturb least (their noise only ever adds). The floor is the NCHW model's bare "
        "forward + backward; *channels_last* and *auto* are the engine with `memory_format` "
        "(auto: one long-lived scheduler, as a server runs it); *served* is what the server "
        "runs by default: BatchNorm folded into the convolutions at load, channels_last. "
        "The map changes are relative L2 against the NCHW map (same rows and seed)."
        + _missing(record),
        "",
        "| model | method | variant | samples × steps (rows per pass) | floor s "
        + "".join(f"| {label} × floor " for label in ENGINE_LABELS.values())
        + "| map change: channels_last | map change: served | auto chose |",
        "|---|---|---|---|---|" + "---|" * len(ENGINE_LABELS) + "---|---|---|",
    ]
    for case in cases:
        r = case["results"]
        cells = [_ratio(r[name], r["floor"]) if name in r else "—" for name in ENGINE_LABELS]
        lines.append(
            f"| {case['model']} {case['size']}² | {case['method']} | {case['variant']} | "
            f"{case['nt_samples']} × {case['n_steps']} ({case['batch']}) | "
            f"{r['floor']['median_s']:.3f} | "
            + " | ".join(cells)
            + f" | {_l2(case, 'channels_last_rel_l2')} | {_l2(case, 'served_rel_l2')}"
            + f" | {case.get('auto_chose', '—')} |"
        )
    return "\n".join(lines)


def _l2(case: dict[str, Any], key: str) -> str:
    value = case.get(key)
    if case.get("map_all_zero"):  # no relative change of a zero map: its absolute one
        return f"all-zero map (max change {case['max_abs_change']:.0e})"
    return "—" if value is None or value != value else f"{value:.1e}"


def _fusion_layout(settings: dict[str, Any]) -> str:
    if settings.get("layout") == "served":
        folded = settings.get("batchnorms_folded", 0)
        return f"run as served ({folded} BatchNorms folded at load, channels_last)"
    return "the model as built (NCHW)"


def fusion_table(record: dict[str, Any]) -> str:
    s = record["settings"]
    lines = [
        f"{measured_on(record)}. {s['model']}, input {s['input']}, nt_samples {s['nt_samples']} "
        f"per request, nt_samples_batch_size {s['nt_samples_batch_size']} rows, median of "
        f"{s['repeats']} interleaved rounds, {_fusion_layout(s)}. *Default*: every pass one "
        "model call; *tuned*: "
        "`tune_pass_rows` on, long-lived and warm (the call sizes it chose in brackets).",
        "",
        "| k | rows | default: one at a time, req/s | default: fused, req/s "
        "| **default: fused / one at a time** (fastest CPU times) "
        "| tuned: one at a time, req/s | tuned: fused, req/s | **tuned: fused / one at a time** "
        "| max abs difference |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case in record["cases"]:
        rps, r = case["requests_per_s"], case["results"]
        cpu = None
        if r["fused"].get("cpu_runs_s"):  # fastest rounds' CPU times, as in the engine table
            cpu = min(r["one_at_a_time"]["cpu_runs_s"]) / min(r["fused"]["cpu_runs_s"])
        calls = {
            name: "/".join(str(n) for n in sorted(set(rows), reverse=True))
            for name, rows in case.get("call_rows", {}).items()
        }
        tuned = [
            f"{rps[name]:.2f} ({calls.get(name, '—')})" if name in rps else "—"
            for name in ("one_at_a_time_tuned", "fused_tuned")
        ]
        lines.append(
            f"| {case['k']} | {case['rows']} | {rps['one_at_a_time']:.2f} | {rps['fused']:.2f} | "
            f"{case['throughput_ratio']:.3f} ({f'{cpu:.3f}' if cpu else '—'}) | "
            f"{tuned[0]} | {tuned[1]} | {case.get('throughput_ratio_tuned', float('nan')):.3f} | "
            f"{case['max_abs_difference']:.1e} |"
        )
    return "\n".join(lines)


def memory_table(record: dict[str, Any]) -> str:
    s, results = record["settings"], record["results"]
    cuda = s["measure"].startswith("CUDA")
    peak, before = ("cuda_peak", "cuda_before") if cuda else ("peak_rss", "rss_before")
    lines = [
        f"{measured_on(record)}. {s['model']}, input {s['input']}, nt_samples_batch_size "
        f"{s['nt_samples_batch_size']} rows, one fresh process per cell; {s['measure']} in MiB "
        "(increase over the memory held before the run in brackets).",
        "",
        "| nt_samples | engine | Captum NoiseTunnel |",
        "|---|---|---|",
    ]
    for i, n in enumerate(s["nt_samples"]):
        runs = [results[name]["runs"][i] for name in ("engine", "captum")]
        cells = [f"{r[peak] / MIB:.0f} (+{(r[peak] - r[before]) / MIB:.0f})" for r in runs]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    first, last = s["nt_samples"][0], s["nt_samples"][-1]
    lines.append(
        f"| **peak at {last} / peak at {first}** | "
        f"**{results['engine']['peak_ratio']:.3f}** | **{results['captum']['peak_ratio']:.3f}** |"
    )
    return "\n".join(lines)


def _serving_rows(case: dict[str, Any]) -> list[str]:
    lines = [
        "| path | median s | × engine | outside the engine, ms | engine + outside, × engine "
        "| worker: decode / predict / encode ms | answer bytes | rel. L2 to engine |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in case["results"].items():
        w, outside = r["worker_ms"], r.get("outside_engine_ms")
        served = "— | — | —"  # the engine alone, or the stock handler (it reports no timings)
        if outside is not None:
            served = (
                f"{outside:.0f} | {r['ratio_from_outside']:.3f} | "
                f"{w['decode']:.1f} / {w['predict']:.1f} / {w['encode']:.1f}"
            )
        size = f"{r['response_bytes']:,}" if r["response_bytes"] else "—"
        l2 = r["relative_l2_to_engine"]
        agree = "—" if l2 is None or name in ("engine", "forward_alone") else f"{l2:.1e}"
        agree += " †" if r.get("compared_with") else ""
        lines.append(
            f"| {SERVING_LABELS.get(name, name)} | {r['median_s']:.3f} | "
            f"{r['ratio_to_engine']:.3f} | {served} | {size} | {agree} |"
        )
    return lines


def _serving_model(name: str, case: dict[str, Any]) -> str:
    model = case.get("model") or ("shapes" if name == "shapes" else "resnet18")
    return SERVING_MODELS.get(model, model)


def serving_table(record: dict[str, Any]) -> str:
    cases = record["cases"]
    named = [{**case, "name": name} for name, case in cases.items()]
    when = runs_measured(
        record,
        named,
        lambda c: _serving_model(c["name"], c),
        lambda c: f", median of {_settings(record, c)['repeats']} interleaved rounds",
    )
    lines = [
        f"{when}. TorchServe {record['settings']['torchserve']}, one request "
        "at a time; latency is "
        "the client's wall time including building the request and decoding the answer. "
        "*Outside the engine*: a request's wall time minus the explain (for a prediction: "
        "predict) time its worker reported (median), i.e. what serving adds, measured within "
        "the request; *engine + outside* is the ratio it implies, which a busy machine "
        "disturbs far less than the ratio of medians.",
    ]
    for name, case in cases.items():
        lines += [
            "",
            f"*{SERVING_TITLES.get(name, name)}: {case['request']}, "
            f"nt_samples_batch_size {case['nt_samples_batch_size']}.*",
            "",
            *_serving_rows(case),
        ]
        if any(r.get("compared_with") for r in case["results"].values()):
            lines += [
                "",
                "† compared with the same computation in the client process on the stock "
                "handler's own preprocessing of the PNG (torchvision; it differs from our "
                f"server's by {case.get('stock_input_relative_l2', float('nan')):.1e} rel. L2).",
            ]
    return "\n".join(lines)


RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "engine": engine_table,
    "fusion": fusion_table,
    "memory": memory_table,
    "serving": serving_table,
}
