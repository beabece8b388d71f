"""A model that can never load says so once in its worker log, and serve reads it (D1)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from smoothexplain.ops.launcher import load_refusals
from smoothexplain.protocol.errors import LOAD_REFUSED_MARK, InvalidArgument
from smoothexplain.serving.ts_handler import SmoothExplainHandler

WORKER = "2026-12-04T04:10:00,001 [INFO ] W-9000-{name}_1.0-stdout MODEL_LOG - "


def test_refusals_are_read_per_model_from_marked_lines_only() -> None:
    logs = [
        WORKER.format(name="a")
        + "loading model a\n"
        + WORKER.format(name="a")
        + f"{LOAD_REFUSED_MARK} a: defaults.precision: bf16 is slow\n",
        f"{LOAD_REFUSED_MARK} b: model_class 'x:Y' cannot be imported\nTraceback ...\n"
        + f"{LOAD_REFUSED_MARK} no colon after the name\n",
    ]
    assert load_refusals(logs) == {
        "a": "defaults.precision: bf16 is slow",
        "b": "model_class 'x:Y' cannot be imported",
    }
    assert load_refusals(["nothing to see\n", ""]) == {}


def test_the_handler_logs_the_refusal_with_the_model_name_and_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    context = SimpleNamespace(
        system_properties={"model_dir": "/nonexistent"},
        manifest={"model": {"modelName": "broken"}},
        model_yaml_config={"smoothexplain": {"format": "pickle"}},
    )
    with caplog.at_level(logging.ERROR), pytest.raises(InvalidArgument, match="format"):
        SmoothExplainHandler().initialize(context)
    [line] = [r.getMessage() for r in caplog.records if LOAD_REFUSED_MARK in r.getMessage()]
    assert load_refusals([WORKER.format(name="broken") + line])["broken"].startswith(
        "format must be one of"
    )
