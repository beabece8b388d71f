"""A full disk under the metrics directory must not break serving.

TorchServe writes its metric logs to $METRICS_LOCATION and our workers write Prometheus
multiprocess files to $PROMETHEUS_MULTIPROC_DIR; both point at a tmpfs filled to the last
block. Where mounting is not allowed (no CAP_SYS_ADMIN), TorchServe's metric log files are
links to /dev/full instead (every write fails with ENOSPC), and the multiprocess directory is
left unset: the test then covers TorchServe's side only, and says so in its properties.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import shapes_server
from reliability.expected import LocalEngine
from reliability.loadgen import LoadPlan, run_load, verify

from smoothexplain.ops.launcher import TorchServeInstance

pytestmark = pytest.mark.integration


def _fill(folder: Path) -> None:
    """Write zeros until the file system says ENOSPC."""
    with (folder / "filler").open("wb") as filler:
        try:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC
    # Also take the last partial block: small writes until nothing fits.
    with (folder / "filler-tail").open("wb", buffering=0) as tail:
        try:
            while True:
                tail.write(b"\0")
        except OSError as error:
            assert error.errno == errno.ENOSPC


@pytest.fixture(scope="module")
def metrics_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    folder = tmp_path_factory.mktemp("fullmetrics")
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=512k,mode=0777", "tmpfs", str(folder)],
            capture_output=True,
        ).returncode
        == 0
    )
    try:
        if mounted:
            _fill(folder)
        else:
            for name in ("ts_metrics.log", "model_metrics.log"):
                (folder / name).symlink_to("/dev/full")
        yield folder, "tmpfs" if mounted else "devfull"
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], check=True)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    demo_artifacts: Path,
    metrics_dir: tuple[Path, str],
) -> Iterator[TorchServeInstance]:
    root = tmp_path_factory.mktemp("diskfull")
    folder, mode = metrics_dir
    env = {"METRICS_LOCATION": str(folder)}
    if mode == "tmpfs":
        env["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    with shapes_server(root, demo_artifacts, env, batchSize=4, maxBatchDelay=20) as instance:
        yield instance


def test_serving_goes_on_with_the_metrics_disk_full(
    server: TorchServeInstance,
    metrics_dir: tuple[Path, str],
    record_property: pytest.RecordProperty,
) -> None:
    folder, mode = metrics_dir
    record_property("disk_full_mode", mode)
    if mode == "tmpfs":
        assert os.statvfs(folder).f_bavail == 0
    workers = server.worker_pids("shapes")
    plan = LoadPlan(clients=2, requests_per_client=8, max_seconds=300, seed=3)
    report = run_load(server.inference_url, server.grpc_target, server.inference_token, plan)
    assert [s.failure for s in report.lost] == []
    assert [s.response.error.message for s in report.server_errors if s.response] == []
    assert verify(report, LocalEngine()) == []
    assert server.worker_pids("shapes") == workers  # no worker died writing metrics
    assert server.is_running()
