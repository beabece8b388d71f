"""deploy/prometheus/ checked by Prometheus' own tool: config, alert rules and their unit tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from promserver import DEPLOY, ensure_prometheus

pytestmark = pytest.mark.integration


def _promtool(*args: str) -> str:
    _, promtool = ensure_prometheus()
    done = subprocess.run(
        [promtool, *args], cwd=DEPLOY, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_scrape_config_is_valid() -> None:
    assert "SUCCESS" in _promtool("check", "config", "prometheus.yml")


def test_alert_rules_are_valid() -> None:
    assert "SUCCESS: 8 rules found" in _promtool("check", "rules", "alerts.yml")


def test_alert_rules_fire_when_they_should(tmp_path: Path) -> None:
    """alerts.test.yml: each alert fires on a synthetic incident and stays quiet otherwise."""
    assert "SUCCESS" in _promtool("test", "rules", "alerts.test.yml")
    # The test file itself can fail: a wrong expectation is reported.
    broken = tmp_path / "broken.test.yml"
    text = (DEPLOY / "alerts.test.yml").read_text().replace("10% of requests", "11% of requests")
    broken.write_text(text.replace("  - alerts.yml", f"  - {DEPLOY / 'alerts.yml'}"))
    _, promtool = ensure_prometheus()
    failed = subprocess.run([promtool, "test", "rules", str(broken)], capture_output=True)
    assert failed.returncode != 0 and b"SmoothExplainHighErrorRate" in failed.stdout + failed.stderr
