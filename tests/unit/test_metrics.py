"""Metrics without TorchServe: what the data plane records, multiprocess merging, the exporter."""

from __future__ import annotations

import io
import math
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import prometheus_client.values
import pytest
import requests
import torch
from PIL import Image
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from smoothexplain._proto.smoothexplain.v1 import explain_pb2 as pb
from smoothexplain.ops.exporter import Exporter, Probes
from smoothexplain.ops.launcher import free_port
from smoothexplain.serving import memory
from smoothexplain.serving.config import parse_config
from smoothexplain.serving.metrics import (
    ServerCollector,
    ServiceMetrics,
    status_class,
    worker_collector,
)
from smoothexplain.serving.service import ExplainService, Incoming

from .analytic import small_cnn

CHUNK = 5
CONFIG = parse_config(
    {
        "model_class": "tests.unit.analytic:small_cnn",
        "nt_samples_batch_size": CHUNK,
        "preprocess": {"size": 8, "resize": 8, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "defaults": {"nt_samples": 4, "top_k": 3},
        "limits": {"max_nt_samples": 64},
    }
)


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _explain(image: int, **options: object) -> Incoming:
    request = pb.Request(
        input=pb.Input(image=_png(image)), explain=True, options=pb.ExplainOptions(**options)
    )
    return Incoming(request.SerializeToString(), from_grpc=True)


def _service(metrics: ServiceMetrics) -> ExplainService:
    labels = {i: str(i) for i in range(5)}
    return ExplainService(small_cnn(), CONFIG, labels, torch.device("cpu"), "tiny", metrics)


def test_one_batch_is_recorded_by_kind_method_and_outcome() -> None:
    metrics = ServiceMetrics("tiny", torch.device("cpu"))
    batch = [
        _explain(1, seed=1, nt_samples=7),
        _explain(2, seed=2, nt_samples=3, method=pb.METHOD_INTEGRATED_GRADIENTS, n_steps=4),
        Incoming(_png(3), explain_path=False),  # a REST prediction, raw PNG body
        _explain(4, nt_samples=1000),  # over max_nt_samples: 400
    ]
    answers = _service(metrics).handle(batch)
    assert [a.status for a in answers] == [200, 200, 200, 400]
    value = metrics.registry.get_sample_value

    def requests_of(kind: str, method: str, nt_type: str, status: str) -> float | None:
        labels = {"model": "tiny", "kind": kind, "method": method, "nt_type": nt_type}
        return value("smoothexplain_requests_total", {**labels, "status_class": status})

    assert requests_of("explain", "gradient", "smoothgrad", "2xx") == 1
    assert requests_of("explain", "integrated_gradients", "smoothgrad", "2xx") == 1
    assert requests_of("predict", "", "", "2xx") == 1
    assert requests_of("explain", "", "", "4xx") == 1
    ig = {"model": "tiny", "method": "integrated_gradients", "nt_type": "smoothgrad"}
    assert value("smoothexplain_explain_duration_seconds_count", ig) == 1
    assert value("smoothexplain_noise_rows_total", ig) == 12
    rows = 7 + 12
    assert value("smoothexplain_chunk_rows_sum", {"model": "tiny"}) == rows
    # The two jobs share chunks: ceil(19 / 5) model calls, none above the bound.
    assert value("smoothexplain_chunk_rows_count", {"model": "tiny"}) == math.ceil(rows / CHUNK)
    assert (
        value("smoothexplain_chunk_rows_bucket", {"model": "tiny", "le": "4.0"}) == 1
    )  # 19 = 3×5+4
    assert value("smoothexplain_chunk_rows_limit", {"model": "tiny"}) == CHUNK
    assert value("smoothexplain_oom_splits_total", {"model": "tiny"}) == 0
    assert value("smoothexplain_batch_requests_sum", {"model": "tiny"}) == 4
    host = {"model": "tiny", "memory": "host"}
    if memory.reset_peak_rss():  # a kernel that resets VmHWM: one peak per batch
        assert value("smoothexplain_batch_peak_memory_bytes_count", host) == 1
        assert value("smoothexplain_batch_peak_memory_bytes_sum", host) > 10e6  # type: ignore[operator]
    else:  # never the peak since the worker started, labelled as a batch's
        assert value("smoothexplain_batch_peak_memory_bytes_count", host) is None
    assert value("smoothexplain_worker_resident_memory_bytes", {"model": "tiny"}) > 10e6  # type: ignore[operator]
    assert metrics.failures == 0


def test_status_classes() -> None:
    assert [status_class(s) for s in (200, 400, 415, 503)] == ["2xx", "4xx", "4xx", "5xx"]
    assert status_class(504, client_deadline=True) == "deadline"


def test_a_request_past_its_own_deadline_is_no_server_failure() -> None:
    """A client's deadline_unix_ms of 1 (1970) gets 504, counted as `deadline`, not `5xx`:
    any client could otherwise fire the error-rate alert. The server's own time limit (the
    batch's share of responseTimeout) stays a 5xx."""
    metrics = ServiceMetrics("tiny", torch.device("cpu"))
    past = pb.Request(
        input=pb.Input(image=_png(1)),
        explain=True,
        deadline_unix_ms=1,
        options=pb.ExplainOptions(nt_samples=2),
    )
    ok = _explain(2, seed=2, nt_samples=2)
    answers = _service(metrics).handle([Incoming(past.SerializeToString(), from_grpc=True), ok])
    assert [a.status for a in answers] == [504, 200]
    value = metrics.registry.get_sample_value
    labels = {"model": "tiny", "kind": "explain", "method": "gradient", "nt_type": "smoothgrad"}
    assert value("smoothexplain_requests_total", {**labels, "status_class": "deadline"}) == 1
    assert value("smoothexplain_requests_total", {**labels, "status_class": "5xx"}) is None
    service = ExplainService(
        small_cnn(), CONFIG, {}, torch.device("cpu"), "tiny", metrics, response_timeout=1e-9
    )
    (late,) = service.handle([_explain(3, seed=3, nt_samples=2)])
    assert late.status == 504
    assert value("smoothexplain_requests_total", {**labels, "status_class": "5xx"}) == 1


def test_a_broken_metrics_directory_never_breaks_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Multiprocess mode whose directory cannot be written (here: it is a file)."""
    not_a_dir = tmp_path / "full"
    not_a_dir.write_text("")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(not_a_dir))
    monkeypatch.setattr(
        prometheus_client.values, "ValueClass", prometheus_client.values.MultiProcessValue()
    )
    metrics = ServiceMetrics("tiny", torch.device("cpu"))
    answers = _service(metrics).handle([_explain(1, seed=1), _explain(2, seed=2)])
    assert [a.status for a in answers] == [200, 200]
    assert metrics.failures >= 3
    assert "recording metrics failed" in caplog.text


def test_a_reset_the_kernel_ignores_is_reported_and_no_host_peak_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _touch_and_unmap()  # the peak now lies 64 MiB above the RSS
    monkeypatch.setattr(memory, "CLEAR_REFS", tmp_path / "clear_refs")  # written, ignored
    assert not memory.reset_peak_rss()
    metrics = ServiceMetrics("tiny", torch.device("cpu"))
    for _ in range(2):
        metrics.batch_started()
        metrics.batch_finished(1)
    host = {"model": "tiny", "memory": "host"}
    value = metrics.registry.get_sample_value
    assert value("smoothexplain_batch_peak_memory_bytes_count", host) is None
    assert value("smoothexplain_worker_resident_memory_bytes", {"model": "tiny"}) > 10e6  # type: ignore[operator]
    assert caplog.text.count("does not reset VmHWM") == 1
    assert metrics.failures == 0


def _worker(directory: Path, requests: int) -> int:
    """A forked "worker" that records `requests` answers in multiprocess mode, then exits."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
            prometheus_client.values.ValueClass = prometheus_client.values.MultiProcessValue()
            metrics = ServiceMetrics("m", torch.device("cpu"))
            for _ in range(requests):
                metrics.request_answered("explain", "gradient", "smoothgrad", 200, 0.5)
            metrics.batch_finished(requests)
            code = 0 if metrics.failures == 0 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.fixture
def two_dead_workers(tmp_path: Path) -> Path:
    """Two worker processes (3 and 4 requests) that recorded into one directory and exited."""
    assert [_worker(tmp_path, n) for n in (3, 4)] == [0, 0]
    return tmp_path


def _scrape(collector: object) -> dict[str, float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)  # type: ignore[arg-type]
    from prometheus_client import generate_latest

    text = generate_latest(registry).decode()
    return {
        f"{sample.name}{sorted(sample.labels.items())}": sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_workers_are_summed_and_dead_workers_gauges_dropped(two_dead_workers: Path) -> None:
    assert len(list(two_dead_workers.glob("gauge_liveall_*.db"))) == 2
    samples = _scrape(worker_collector(two_dead_workers))
    labels = [
        ("kind", "explain"), ("method", "gradient"), ("model", "m"), ("nt_type", "smoothgrad"),
        ("status_class", "2xx"),
    ]  # fmt: skip
    assert samples[f"smoothexplain_requests_total{labels}"] == 7
    assert samples["smoothexplain_batch_requests_count[('model', 'm')]"] == 2
    # Both workers have exited: their resident-memory gauges are gone, and so are the files.
    assert not [k for k in samples if k.startswith("smoothexplain_worker_resident")]
    assert list(two_dead_workers.glob("gauge_liveall_*.db")) == []


@pytest.fixture
def exporter(tmp_path: Path) -> Iterator[Exporter]:
    def not_ready() -> bool:
        raise ConnectionRefusedError("TorchServe still loading")

    collectors = [worker_collector(tmp_path), ServerCollector(lambda: [os.getpid()], lambda: True)]
    server = Exporter(
        "127.0.0.1", free_port(), collectors, Probes(alive=lambda: True, ready=not_ready)
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_exporter_serves_metrics_and_probes(exporter: Exporter) -> None:
    metrics = requests.get(f"{exporter.url}/metrics", timeout=10)
    assert metrics.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(metrics.text)}
    rss = families["smoothexplain_server_resident_memory_bytes"].samples[0].value
    assert rss == pytest.approx(memory.rss_bytes(), rel=0.5)
    assert families["smoothexplain_torchserve_up"].samples[0].value == 1
    assert requests.get(f"{exporter.url}/healthz", timeout=10).status_code == 200
    ready = requests.get(f"{exporter.url}/readyz", timeout=10)
    assert ready.status_code == 503 and ready.text == "unavailable\n"
    assert requests.get(f"{exporter.url}/other", timeout=10).status_code == 404
    exporter.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{exporter.url}/healthz", timeout=5)


def _touch_and_unmap(size: int = 64 * 2**20) -> None:
    """Make `size` bytes resident, then give them back to the kernel (an mmap of its own:
    malloc, whose thresholds other tests raise with keep_freed_memory, may keep a freed
    array resident)."""
    block = mmap.mmap(-1, size)
    for offset in range(0, size, mmap.PAGESIZE):
        block[offset] = 1
    block.close()


def test_peak_rss_is_reset_per_batch() -> None:
    baseline = memory.peak_rss_bytes()
    block = mmap.mmap(-1, 64 * 2**20)
    for offset in range(0, len(block), mmap.PAGESIZE):
        block[offset] = 1  # touched, so resident
    high = memory.peak_rss_bytes()
    block.close()
    assert baseline is not None and high is not None and high >= 64 * 2**20
    if memory.reset_peak_rss():  # it says it took: the 64 MiB block is out of the peak
        after = memory.peak_rss_bytes()
        assert after is not None and after < high - 60 * 2**20
    else:  # it says it did not: the peak still holds the block
        after = memory.peak_rss_bytes()
        assert after is not None and after >= high
    limit = memory.host_memory_limit_bytes()
    assert limit is not None and limit > high
