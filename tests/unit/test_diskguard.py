"""Prometheus multiprocess files get real blocks before anything is written into them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from smoothexplain.serving.diskguard import FILE_KINDS, RESERVED_BYTES, reserve_multiprocess_files


def test_every_file_of_the_process_is_allocated(tmp_path: Path) -> None:
    assert reserve_multiprocess_files(str(tmp_path), 4242)
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == sorted(f"{kind}_4242.db" for kind in FILE_KINDS)
    for file in files:
        status = os.stat(file)
        assert status.st_size == RESERVED_BYTES
        assert status.st_blocks * 512 >= RESERVED_BYTES  # blocks, not a sparse hole


def test_no_directory_means_nothing_to_reserve_and_a_bad_one_is_reported(tmp_path: Path) -> None:
    assert reserve_multiprocess_files(None, 1)
    assert not reserve_multiprocess_files(str(tmp_path / "missing"), 1)
    (tmp_path / "file").write_text("")
    assert not reserve_multiprocess_files(str(tmp_path / "file"), 1)


def test_prometheus_client_writes_into_and_reads_back_reserved_files(tmp_path: Path) -> None:
    # prometheus-client picks multiprocess mode at import: a fresh interpreter.
    script = textwrap.dedent(
        """
        import os
        from smoothexplain.serving.diskguard import reserve_multiprocess_files
        assert reserve_multiprocess_files(os.environ["PROMETHEUS_MULTIPROC_DIR"], os.getpid())
        from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector
        Counter("reserved_total", "h", ["a"]).labels("x").inc(3)
        Histogram("reserved_seconds", "h").observe(0.2)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        print(generate_latest(registry).decode())
        """
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert 'reserved_total{a="x"} 3.0' in out
    assert "reserved_seconds_count 1.0" in out
