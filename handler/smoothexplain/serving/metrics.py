"""Every Prometheus metric smoothexplain exports: defined here and nowhere else.

Two producers, one scrape endpoint per server (`smoothexplain serve`, see exporter.py):

- `ServiceMetrics` lives in each TorchServe worker and is fed by the data plane once per batch.
  With $PROMETHEUS_MULTIPROC_DIR set (serve sets it for TorchServe), prometheus-client writes
  every value to per-process files in that directory; the endpoint merges them
  (`worker_collector`). Without it the values stay in the instance's own registry (unit tests).
- `ServerCollector` lives in the serve process and is read at scrape time: the memory of the
  whole TorchServe process group (JVM + workers) and whether TorchServe is up.

Names follow Prometheus conventions (`_seconds`, `_bytes`, `_total`); labels are few and bounded:
model, kind (predict | explain), method, nt_type, status_class (2xx | 4xx | 5xx | deadline), memory
(host | cuda). Recording never raises: a failure (say, a full disk under the multiprocess
directory) is logged and serving goes on.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Concatenate, ParamSpec

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from . import memory
from .diskguard import reserve_multiprocess_files

__all__ = [
    "BATCH_BUCKETS",
    "CHUNK_BUCKETS",
    "LATENCY_BUCKETS",
    "MEMORY_BUCKETS",
    "ServerCollector",
    "ServiceMetrics",
    "status_class",
    "worker_collector",
]

log = logging.getLogger(__name__)
P = ParamSpec("P")

# An explanation takes from about a millisecond (a prediction, a tiny model) to the 120 s
# response timeout (hundreds of samples × IG steps on a CPU): 1-2.5-5 steps over that range.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0,
)  # fmt: skip
# Rows per model call: powers of two, the usual nt_samples_batch_size values.
CHUNK_BUCKETS = tuple(float(2**k) for k in range(13))  # 1 … 4096
# Requests per TorchServe batch (batchSize is rarely above 64).
BATCH_BUCKETS = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0)
# Peak memory per batch: 16 MiB … 256 GiB in steps of √2 (p99 within ~20 % by interpolation).
MEMORY_BUCKETS = tuple(float(round(2 ** (k / 2))) for k in range(48, 77))

_MODEL = ("model",)
_REQUEST = ("model", "kind", "method", "nt_type")


def status_class(http_status: int, client_deadline: bool = False) -> str:
    """200 → '2xx', 415 → '4xx': the bounded label for an answer's HTTP status; 'deadline' for
    a 504 the request's own deadline_unix_ms caused (the client's choice, not a server fault)."""
    return "deadline" if client_deadline else f"{http_status // 100}xx"


def _never_raises(
    method: Callable[Concatenate[ServiceMetrics, P], None],
) -> Callable[Concatenate[ServiceMetrics, P], None]:
    def guarded(self: ServiceMetrics, /, *args: P.args, **kwargs: P.kwargs) -> None:
        try:
            if not self.writable:  # no blocks for the files: a write could SIGBUS the worker
                raise OSError("no space reserved for metrics in $PROMETHEUS_MULTIPROC_DIR")
            method(self, *args, **kwargs)
        except Exception:
            self.failures += 1
            # The first failure with its traceback, then one line per thousand: a full disk
            # must not flood the log it may share.
            if self.failures == 1 or self.failures % 1000 == 0:
                log.warning(
                    "recording metrics failed (%d times); serving goes on",
                    self.failures,
                    exc_info=self.failures == 1,
                )

    guarded.__name__ = method.__name__
    return guarded


class ServiceMetrics:
    """The data plane's metrics for one model in one worker process."""

    def __init__(
        self,
        model: str,
        device: torch.device,
        registry: CollectorRegistry | None = None,
    ) -> None:
        # Before any value exists: give this process's multiprocess files real blocks, or
        # record nothing (diskguard.py: a write into a full disk kills the worker).
        self.writable = reserve_multiprocess_files(
            os.environ.get("PROMETHEUS_MULTIPROC_DIR"), os.getpid()
        )
        # A private registry by default: no import-time globals, and two instances (tests)
        # never clash. In multiprocess mode the values go to files whatever the registry.
        self.registry = registry if registry is not None else CollectorRegistry()
        self.model, self.device, self.failures = model, device, 0
        self._host_peak_reset: bool | None = False  # whether this batch's VmHWM reset took
        r = self.registry
        self.requests = Counter(
            "smoothexplain_requests",
            "Requests answered, by outcome (status_class of the HTTP status of the answer; "
            "'deadline': the request's own deadline_unix_ms passed).",
            [*_REQUEST, "status_class"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "smoothexplain_request_duration_seconds",
            "Time from decoding a request to its encoded answer, in the worker.",
            _REQUEST,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.explain_seconds = Histogram(
            "smoothexplain_explain_duration_seconds",
            "Engine time of the explanation a request was part of (shared by its batch).",
            ("model", "method", "nt_type"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.noise_rows = Counter(
            "smoothexplain_noise_rows",
            "Model rows (noise samples × IG steps) spent on explanations.",
            ("model", "method", "nt_type"),
            registry=r,
        )
        self.chunk_rows = Histogram(
            "smoothexplain_chunk_rows",
            "Rows per forward+backward model call (compare with smoothexplain_chunk_rows_limit).",
            _MODEL,
            buckets=CHUNK_BUCKETS,
            registry=r,
        )
        self.chunk_limit = Gauge(
            "smoothexplain_chunk_rows_limit",
            "Current bound on rows per model call (nt_samples_batch_size, lowered by OOM splits).",
            _MODEL,
            multiprocess_mode="livemax",
            registry=r,
        )
        self.oom_splits = Counter(
            "smoothexplain_oom_splits",
            "Model calls halved and retried after running out of memory.",
            _MODEL,
            registry=r,
        )
        self.batch_requests = Histogram(
            "smoothexplain_batch_requests",
            "Requests per TorchServe batch handed to the worker.",
            _MODEL,
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_peak_memory = Histogram(
            "smoothexplain_batch_peak_memory_bytes",
            "Peak memory while a batch ran: memory=cuda is torch.cuda.max_memory_allocated, "
            "memory=host the worker's peak RSS (VmHWM); both reset at each batch.",
            ("model", "memory"),
            buckets=MEMORY_BUCKETS,
            registry=r,
        )
        self.worker_rss = Gauge(
            "smoothexplain_worker_resident_memory_bytes",
            "Resident memory of each live worker process after its last batch.",
            _MODEL,
            multiprocess_mode="liveall",
            registry=r,
        )
        self.memory_limit = Gauge(
            "smoothexplain_memory_limit_bytes",
            "Memory the worker may use: memory=host the cgroup limit (else physical memory), "
            "memory=cuda the device's total memory.",
            ("model", "memory"),
            multiprocess_mode="livemax",
            registry=r,
        )
        self._prime()

    @_never_raises
    def _prime(self) -> None:
        """Series that must exist before anything happens (a zero OOM count is information)."""
        self.oom_splits.labels(self.model)
        host = memory.host_memory_limit_bytes()
        if host is not None:
            self.memory_limit.labels(self.model, "host").set(host)
        if self.device.type == "cuda":
            total = torch.cuda.get_device_properties(self.device).total_memory
            self.memory_limit.labels(self.model, "cuda").set(total)

    @_never_raises
    def batch_started(self) -> None:
        reset = memory.reset_peak_rss()
        if not reset and self._host_peak_reset is not None:
            log.warning("this kernel does not reset VmHWM: no memory=host batch peaks")
            self._host_peak_reset = None  # warned once; never retried as a success
        if self._host_peak_reset is not None:
            self._host_peak_reset = reset
        memory.reset_cuda_peak(self.device)

    @_never_raises
    def request_answered(
        self,
        kind: str,
        method: str,
        nt_type: str,
        http_status: int,
        seconds: float,
        client_deadline: bool = False,
    ) -> None:
        outcome = status_class(http_status, client_deadline)
        self.requests.labels(self.model, kind, method, nt_type, outcome).inc()
        self.request_seconds.labels(self.model, kind, method, nt_type).observe(seconds)

    @_never_raises
    def request_explained(self, method: str, nt_type: str, rows: int, seconds: float) -> None:
        self.explain_seconds.labels(self.model, method, nt_type).observe(seconds)
        self.noise_rows.labels(self.model, method, nt_type).inc(rows)

    @_never_raises
    def engine_run(self, chunk_rows: Sequence[int], oom_splits: int, limit: int | None) -> None:
        chunks = self.chunk_rows.labels(self.model)
        for rows in chunk_rows:
            chunks.observe(rows)
        if oom_splits:
            self.oom_splits.labels(self.model).inc(oom_splits)
        if limit is not None:
            self.chunk_limit.labels(self.model).set(limit)

    @_never_raises
    def batch_finished(self, requests: int) -> None:
        self.batch_requests.labels(self.model).observe(requests)
        peak = memory.peak_rss_bytes() if self._host_peak_reset else None
        if peak is not None:  # a peak since the process started is no batch's peak
            self.batch_peak_memory.labels(self.model, "host").observe(peak)
        cuda = memory.cuda_peak_bytes(self.device)
        if cuda is not None:
            self.batch_peak_memory.labels(self.model, "cuda").observe(cuda)
        rss = memory.rss_bytes()
        if rss is not None:
            self.worker_rss.labels(self.model).set(rss)


class _WorkerFiles(Collector):
    """The workers' multiprocess files, merged; files of dead workers' live gauges dropped."""

    _LIVE_FILE = re.compile(r"^gauge_live\w+?_(\d+)\.db$")

    def __init__(self, path: Path) -> None:
        self.path = path
        self._merged = MultiProcessCollector(None, path=str(path))  # type: ignore[no-untyped-call]

    def collect(self) -> Iterator[Metric]:
        # TorchServe restarts crashed workers without telling anyone; a gauge of a dead pid
        # would linger forever, so every scrape forgets the pids that are gone.
        for pid in {int(m.group(1)) for m in map(self._LIVE_FILE.match, _names(self.path)) if m}:
            if not _alive(pid):
                mark_process_dead(pid, str(self.path))  # type: ignore[no-untyped-call]
        yield from self._merged.collect()  # type: ignore[no-untyped-call]


def _names(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def worker_collector(path: Path) -> Collector:
    """Collector merging every worker's values from the multiprocess directory `path`."""
    return _WorkerFiles(path)


class ServerCollector(Collector):
    """Metrics of the TorchServe server as a whole, computed by the serve process at scrape time."""

    def __init__(self, pids: Callable[[], Iterable[int]], running: Callable[[], bool]) -> None:
        self._pids, self._running = pids, running

    def collect(self) -> Iterator[Metric]:
        rss = GaugeMetricFamily(
            "smoothexplain_server_resident_memory_bytes",
            "Resident memory of all TorchServe processes (frontend JVM and workers) together.",
        )
        rss.add_metric([], memory.total_rss_bytes(self._pids()))
        yield rss
        up = GaugeMetricFamily(
            "smoothexplain_torchserve_up", "1 while the TorchServe process group is running."
        )
        up.add_metric([], 1.0 if self._running() else 0.0)
        yield up
