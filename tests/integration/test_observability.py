"""`smoothexplain serve` scraped by a real Prometheus: the metrics, the dashboard, SIGTERM.

One serve (TorchServe + exporter) and one Prometheus (1 s scrapes, our scrape config and alert
rules) for the module. Traffic goes in two waves with scrapes in between, so that every rate
in the dashboard has something to measure; every number asserted below is known from what the
test sent.
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import requests
from conftest import build_store
from google.protobuf import json_format
from promserver import PrometheusServer
from serveproc import ServeProcess

from smoothexplain._proto.smoothexplain.v1 import explain_pb2 as pb
from smoothexplain.client.remote import ExplainError, SmoothExplainClient
from smoothexplain.demo import render_sample

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "smoothexplain.json"
CHUNK_LIMIT = 64  # nt_samples_batch_size of deploy/model-config.yaml


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory, demo_artifacts: Path) -> Iterator[ServeProcess]:
    root = tmp_path_factory.mktemp("obs")
    store = build_store(root / "store", ["shapes"], demo_artifacts, batchSize=4, maxBatchDelay=50)
    with ServeProcess(root / "srv", store, ["shapes=shapes.mar"]) as process:
        yield process


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, serve: ServeProcess) -> Iterator[Any]:
    targets = {
        "smoothexplain": f"127.0.0.1:{serve.ports['exporter']}",
        "torchserve": f"127.0.0.1:{serve.ports['metrics']}",
    }
    with PrometheusServer(tmp_path_factory.mktemp("prom"), targets) as server:
        yield server


def _png(label: int, seed: int) -> bytes:
    image, _ = render_sample(label, seed)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _wave(serve: ServeProcess, seed: int) -> dict[str, int]:
    """4 good explanations (3 gradient over gRPC, 1 IG over REST), 2 predictions, 1 rejected."""
    token = Path(serve.endpoints["key_file"])
    rest_url = serve.endpoints["rest"]
    headers = {"Authorization": f"Bearer {json.loads(token.read_text())['inference']['key']}"}

    def grpc_explain(i: int) -> int:
        with SmoothExplainClient(grpc_port=serve.ports["grpc-inference"], token_file=token) as c:
            return c.explain("shapes", _png(i, seed + i), seed=i, nt_samples=40 + 30 * i).rows

    def rest_ig() -> int:
        request = pb.Request(
            input=pb.Input(image=_png(5, seed)),
            explain=True,
            options=pb.ExplainOptions(
                method=pb.METHOD_INTEGRATED_GRADIENTS,
                nt_type=pb.NT_TYPE_VARGRAD,
                nt_samples=3,
                n_steps=8,
                seed=seed,
            ),
        )
        answer = requests.post(
            f"{rest_url}/explanations/shapes",
            data=json_format.MessageToJson(request),
            headers={**headers, "Content-Type": "application/json"},
            timeout=120,
        )
        assert answer.status_code == 200, answer.text
        return int(answer.json()["rows"])

    def predict(i: int) -> int:
        answer = requests.post(
            f"{rest_url}/predictions/shapes", data=_png(i, seed), headers=headers, timeout=60
        )
        assert answer.status_code == 200, answer.text
        return 0

    def rejected() -> int:
        port = serve.ports["grpc-inference"]
        with (
            SmoothExplainClient(grpc_port=port, token_file=token) as c,
            pytest.raises(ExplainError),
        ):
            c.explain("shapes", _png(0, seed), nt_samples=100_000)
        return 0

    calls = [lambda i=i: grpc_explain(i) for i in range(3)]
    calls += [rest_ig, lambda: predict(1), lambda: predict(2), rejected]
    with ThreadPoolExecutor(len(calls)) as pool:
        rows = [f.result() for f in [pool.submit(c) for c in calls]]
    return {"rows": sum(rows), "gradient": 3, "ig": 1, "ok": 6, "rejected": 1}


@pytest.fixture(scope="module")
def traffic(serve: ServeProcess, prometheus: PrometheusServer) -> dict[str, int]:
    """Two waves; after each, Prometheus has scraped everything it produced."""
    sent = {"rows": 0, "gradient": 0, "ig": 0, "ok": 0, "rejected": 0}
    for seed in (100, 200):
        for key, value in _wave(serve, seed).items():
            sent[key] += value
        explained = sent["gradient"] + sent["ig"]
        seen = prometheus.wait_for(
            "sum(smoothexplain_explain_duration_seconds_count)", lambda v, n=explained: v == n
        )
        assert seen == explained
        prometheus.wait_for(  # TorchServe's own counter lags its answers a little
            "sum(ts_inference_requests_total)",
            lambda v, n=sent["ok"] + sent["rejected"]: v is not None and v >= n,
        )
    return sent


def test_request_outcomes_and_explain_counts_match_the_traffic(
    prometheus: PrometheusServer, traffic: dict[str, int]
) -> None:
    def count(expr: str) -> float | None:
        return prometheus.value(expr)

    assert count('sum(smoothexplain_requests_total{status_class="2xx"})') == traffic["ok"]
    assert count('sum(smoothexplain_requests_total{status_class="4xx"})') == traffic["rejected"]
    assert count('sum(smoothexplain_requests_total{status_class="5xx"})') is None
    assert count('sum(smoothexplain_requests_total{kind="predict"})') == 4
    by_method = {
        r["metric"]["method"]: float(r["value"][1])
        for r in prometheus.query(
            "sum by (method) (smoothexplain_explain_duration_seconds_count{model='shapes'})"
        )
    }
    assert by_method == {"gradient": traffic["gradient"], "integrated_gradients": traffic["ig"]}
    # Every request answered passed through a TorchServe batch and was timed once.
    assert count("sum(smoothexplain_batch_requests_sum)") == traffic["ok"] + traffic["rejected"]
    assert count("sum(smoothexplain_request_duration_seconds_count)") == (
        traffic["ok"] + traffic["rejected"]
    )
    p50 = count(
        "histogram_quantile(0.5, sum by (le) (rate("
        'smoothexplain_request_duration_seconds_bucket{kind="explain"}[1m])))'
    )
    assert p50 is not None and 0.001 < p50 < 120


def test_rows_chunks_and_memory_are_sensible(
    prometheus: PrometheusServer, traffic: dict[str, int]
) -> None:
    value = prometheus.value
    assert value("sum(smoothexplain_noise_rows_total)") == traffic["rows"]
    # Every noise row went through exactly one model call, and no call exceeded the bound.
    assert value("sum(smoothexplain_chunk_rows_sum)") == traffic["rows"]
    chunks = value("sum(smoothexplain_chunk_rows_count)")
    assert chunks is not None and chunks >= math.ceil(traffic["rows"] / CHUNK_LIMIT)
    assert value(f'sum(smoothexplain_chunk_rows_bucket{{le="{CHUNK_LIMIT}.0"}})') == chunks
    assert value("max(smoothexplain_chunk_rows_limit)") == CHUNK_LIMIT
    assert value("sum(smoothexplain_oom_splits_total)") == 0
    batches = value('sum(smoothexplain_batch_peak_memory_bytes_count{memory="host"})')
    assert batches == value("sum(smoothexplain_batch_requests_count)") and batches
    peak = value('max(smoothexplain_batch_peak_memory_bytes_sum{memory="host"}) / ' + str(batches))
    worker = value("sum(smoothexplain_worker_resident_memory_bytes)")
    server = value("sum(smoothexplain_server_resident_memory_bytes)")
    limit = value('max(smoothexplain_memory_limit_bytes{memory="host"})')
    assert peak is not None and worker is not None and server is not None and limit is not None
    assert 50e6 < peak < limit and 50e6 < worker < server < limit  # the JVM is in `server`
    assert value("max(smoothexplain_torchserve_up)") == 1


def test_alert_rules_evaluate_on_the_real_series(
    prometheus: PrometheusServer, traffic: dict[str, int]
) -> None:
    groups = prometheus.api("rules")["groups"]
    rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert len(rules) == 8
    for name, rule in rules.items():
        assert rule["health"] == "ok", (name, rule.get("lastError"))
    # Nothing failed, ran out of memory or stopped. (Latency alerts may be pending: the
    # predictions here share batches with explanations and wait for them.)
    for name in (
        "SmoothExplainHighErrorRate",
        "SmoothExplainHostMemoryNearLimit",
        "SmoothExplainOutOfMemorySplits",
        "SmoothExplainTorchServeDown",
    ):
        assert rules[name]["state"] == "inactive", name


def test_torchserve_metrics_stay_available(
    prometheus: PrometheusServer, traffic: dict[str, int]
) -> None:
    total = prometheus.value('sum(ts_inference_requests_total{model_name="shapes"})')
    assert total is not None and total >= traffic["ok"] + traffic["rejected"]
    assert prometheus.value('sum(ts_queue_latency_microseconds{model_name="shapes"})')


def _render_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "render_dashboard", REPO_ROOT / "tools" / "render_dashboard.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_dashboard_query_parses_and_returns_data(
    prometheus: PrometheusServer, traffic: dict[str, int]
) -> None:
    tool = _render_tool()
    dashboard = json.loads(DASHBOARD.read_text())
    checked = tool.targets(dashboard)
    assert len(checked) >= 15
    for title, target in checked:
        result = prometheus.query(tool.expand(target["expr"], "30s"))
        finite = [r for r in result if math.isfinite(float(r["value"][1]))]
        assert finite, f"{title} / {target['refId']}: {target['expr']} returned {result}"


def test_the_dashboard_renders_to_png(
    prometheus: PrometheusServer, traffic: dict[str, int], tmp_path: Path
) -> None:
    out = _render_tool().render(prometheus.url, tmp_path / "dashboard.png", minutes=2)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000


def test_probes_answer_without_a_token(serve: ServeProcess) -> None:
    for probe in ("health", "ready"):
        answer = requests.get(serve.endpoints[probe], timeout=10)
        assert answer.status_code == 200 and answer.text == "ok\n"
    ping = requests.get(f"{serve.endpoints['rest']}/ping", timeout=10)
    assert ping.status_code == 400  # TorchServe's own /ping wants the inference key


def test_sigterm_stops_torchserve_and_the_exporter(
    serve: ServeProcess, traffic: dict[str, int]
) -> None:
    """Last in the module: stops the server the other tests used."""
    assert serve.leftover_pids()
    assert serve.terminate() == 0
    assert serve.leftover_pids() == []
    with pytest.raises(requests.ConnectionError):
        requests.get(serve.endpoints["metrics"], timeout=5)
    assert not (serve.workdir / "serve.pid").exists()
