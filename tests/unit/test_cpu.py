"""Precision that knows its CPU (issue 17): bf16/fp16 are refused by the server, refused as a
model default at load, and warned about by explain(), on CPUs without native instructions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from smoothexplain import explain
from smoothexplain._proto.smoothexplain.v1 import explain_pb2 as pb
from smoothexplain.engine import cpu
from smoothexplain.engine.cpu import CpuSupport, SlowPrecisionWarning, slow_precision_reason
from smoothexplain.protocol.errors import InvalidArgument
from smoothexplain.protocol.options import Precision
from smoothexplain.serving.codec import tensor_to_message
from smoothexplain.serving.config import parse_config
from smoothexplain.serving.service import ExplainService, Incoming

from .analytic import small_cnn

AVX2 = CpuSupport("AVX2", frozenset({"avx2", "fma"}))
AVX512 = CpuSupport("AVX512", frozenset({"avx2", "avx512f"}))  # no BF16 extension
SAPPHIRE = CpuSupport("AVX512", frozenset({"avx512f", "avx512_bf16", "amx_bf16", "amx_fp16"}))


def test_native_support_comes_from_the_feature_flags() -> None:
    assert AVX2.native(Precision.BF16) is False and AVX512.native(Precision.BF16) is False
    assert SAPPHIRE.native(Precision.BF16) and SAPPHIRE.native(Precision.FP16)
    assert CpuSupport("AVX512", frozenset({"avx512_bf16"})).native(Precision.FP16) is False
    assert CpuSupport("DEFAULT", None).native(Precision.BF16) is None  # unknown: not refused
    assert all(s.native(Precision.FP32) for s in (AVX2, SAPPHIRE))
    assert "fp32 only" in AVX2.describe() and "bf16, fp16" in SAPPHIRE.describe()


def test_the_reason_names_the_missing_instructions_and_spares_gpus() -> None:
    cpu_device = torch.device("cpu")
    reason = slow_precision_reason(Precision.BF16, cpu_device, AVX512)
    assert "AVX512_BF16" in reason and "AMX_BF16" in reason and "fp32" in reason
    assert slow_precision_reason(Precision.BF16, cpu_device, SAPPHIRE) == ""
    assert slow_precision_reason(Precision.FP32, cpu_device, AVX2) == ""
    assert slow_precision_reason(Precision.BF16, torch.device("cuda"), AVX2) == ""


def test_the_flags_of_this_machine_are_read() -> None:
    support = cpu.cpu_support()
    assert support.capability == torch.backends.cpu.get_cpu_capability()
    if Path("/proc/cpuinfo").is_file():
        assert support.flags is not None and support.flags


def _service(config: dict[str, Any] | None = None) -> ExplainService:
    raw = {
        "model_class": "tests.unit.analytic:small_cnn",
        "preprocess": {"size": 8, "resize": 8},
        **(config or {}),
    }
    return ExplainService(small_cnn(), parse_config(raw), {}, torch.device("cpu"), "m")


def test_the_server_refuses_slow_precision_naming_the_field(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cpu, "cpu_support", lambda: AVX2)
    service = _service()
    x = torch.randn(3, 8, 8)
    for precision, status in ((pb.PRECISION_BF16, 400), (pb.PRECISION_FP32, 200)):
        request = pb.Request(
            input=pb.Input(tensor=tensor_to_message(x)),
            explain=True,
            options=pb.ExplainOptions(precision=precision, nt_samples=2),
        )
        (answer,) = service.handle([Incoming(request.SerializeToString(), from_grpc=True)])
        assert answer.status == status
        if status == 400:
            error = pb.Response.FromString(answer.body).error  # type: ignore[arg-type]
            assert error.field == "options.precision" and "AVX512_BF16" in error.message
    monkeypatch.setattr(cpu, "cpu_support", lambda: SAPPHIRE)
    (answer,) = service.handle([Incoming(request.SerializeToString(), from_grpc=True)])
    assert answer.status == 200


def test_a_slow_default_precision_is_refused_when_the_model_loads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cpu, "cpu_support", lambda: AVX2)
    with pytest.raises(InvalidArgument) as caught:
        _service({"defaults": {"precision": "fp16"}})
    assert caught.value.field == "defaults.precision"
    _service({"defaults": {"precision": "fp32"}})


def test_explain_warns_and_still_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu, "cpu_support", lambda: AVX2)
    with pytest.warns(SlowPrecisionWarning, match="bf16"):
        low = explain(
            small_cnn(), torch.randn(1, 3, 8, 8), 0, nt_samples=2, precision="bf16", seed=1
        )
    assert low.dtype == torch.float32 and bool(torch.isfinite(low).all())
