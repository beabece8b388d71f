"""`make run`'s server handling: reuse a complete earlier server, restart an incomplete one."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from smoothexplain.demo import run


def _left_running(workdir: Path, models: list[str], pid: int) -> None:
    workdir.mkdir(parents=True)
    (workdir / "endpoints.json").write_text(json.dumps({"pid": pid, "models": models}))


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []

    def start(workdir: Path, store: Path, timeout: float) -> dict[str, object]:
        seen.append("start")
        return {"models": list(run.MODELS)}

    def stopped(command: list[str], check: bool) -> subprocess.CompletedProcess[str]:
        seen.append(" ".join(command[-3:]))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(run, "_start", start)
    monkeypatch.setattr(run.subprocess, "run", stopped)
    return seen


def test_a_server_serving_every_model_is_reused(tmp_path: Path, calls: list[str]) -> None:
    _left_running(tmp_path / "server", list(run.MODELS), os.getpid())
    found = run._server(tmp_path / "server", tmp_path, 1.0)
    assert found["pid"] == os.getpid() and calls == []


def test_a_server_lacking_a_model_is_restarted(tmp_path: Path, calls: list[str]) -> None:
    _left_running(tmp_path / "server", ["shapes", "shapes_ts", "shapes_onnx"], os.getpid())
    run._server(tmp_path / "server", tmp_path, 1.0)
    assert calls == [f"stop --workdir {tmp_path / 'server'}", "start"]


def test_a_dead_server_s_leftovers_are_cleared(tmp_path: Path, calls: list[str]) -> None:
    child = subprocess.Popen(["true"])
    child.wait()
    _left_running(tmp_path / "server", list(run.MODELS), child.pid)
    run._server(tmp_path / "server", tmp_path, 1.0)
    assert calls == ["start"] and not (tmp_path / "server" / "endpoints.json").exists()


def test_the_comparison_sheet_has_one_panel_per_map() -> None:
    photo = Image.new("RGB", (224, 224), (10, 200, 30))
    maps: dict[str, Any] = {
        "SmoothGrad": torch.rand(3, 224, 224),
        "AdaptGrad": torch.rand(3, 224, 224),
    }
    sheet = run._compare(photo, maps)
    assert sheet.size == (3 * run.PANEL + 2 * 8, run.PANEL + 18)
    assert sheet.getpixel((100, 100)) == (10, 200, 30)  # the photo panel comes first
