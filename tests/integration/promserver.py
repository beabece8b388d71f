"""A real Prometheus for the integration tests: installed from Debian when missing, loopback only.

`ensure_prometheus()` installs Debian's `prometheus` package (which brings `promtool`) when
either binary is missing; `PrometheusServer` runs one on a free 127.0.0.1 port with our
deploy/prometheus/prometheus.yml (targets, intervals and rule path replaced) and its own
storage directory, and is stopped in teardown.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml
from aptget import ensure

from smoothexplain.ops.launcher import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy" / "prometheus"


def ensure_prometheus() -> tuple[str, str]:
    """Paths of `prometheus` and `promtool`, installing Debian's package first if needed."""
    prometheus, promtool = ensure("prometheus", "prometheus", "promtool")
    return prometheus, promtool


def scrape_config(targets: Mapping[str, str], interval: str = "1s") -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with each job's target replaced and faster intervals."""
    config: dict[str, Any] = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["global"].update(scrape_interval=interval, evaluation_interval=interval)
    config["rule_files"] = [str(DEPLOY / name) for name in config["rule_files"]]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == set(targets), f"jobs {sorted(jobs)} vs targets {sorted(targets)}"
    for name, target in targets.items():
        jobs[name]["static_configs"] = [{"targets": [target]}]
    return config


class PrometheusServer:
    """One Prometheus on 127.0.0.1 scraping `targets` ({job name: host:port})."""

    def __init__(self, workdir: Path, targets: Mapping[str, str], interval: str = "1s") -> None:
        self.workdir, self.port = workdir, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "prometheus.yml"
        self.config = scrape_config(targets, interval)
        self.log = workdir / "prometheus.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> Self:
        binary, _ = ensure_prometheus()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config))
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Prometheus did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as answer:
                body = json.loads(answer.read())
        except urllib.error.HTTPError as error:  # a bad query: 400 with the parser's message
            body = json.loads(error.read())
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the result vector (each item: {"metric": labels, "value": [t, "v"]})."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The single value of `expr` (None when it returns nothing)."""
        result = self.query(expr)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def wait_for(
        self, expr: str, accept: Callable[[float | None], bool], timeout: float = 30.0
    ) -> float | None:
        """Poll `expr` until `accept(value)`; the last value seen either way."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.value(expr)
            if accept(value) or time.monotonic() > deadline:
                return value
            time.sleep(0.5)
