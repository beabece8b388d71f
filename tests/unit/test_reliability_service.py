"""The data plane's defences without TorchServe: deadlines, the time budget, response size,
inputs the model cannot take, and model files that try to run code when loaded."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from smoothexplain import ExplainJob, Scheduler, make_spec
from smoothexplain._proto.smoothexplain.v1 import explain_pb2 as pb
from smoothexplain.demo.net import ShapesNet
from smoothexplain.protocol.errors import DeadlineExceeded
from smoothexplain.serving.budget import Budgeted
from smoothexplain.serving.codec import tensor_to_message
from smoothexplain.serving.config import parse_config
from smoothexplain.serving.models import load_model
from smoothexplain.serving.service import ExplainService, Incoming
from smoothexplain.serving.ts_handler import SmoothExplainHandler

from .analytic import small_cnn

RAW = {
    "model_class": "tests.unit.analytic:small_cnn",
    "nt_samples_batch_size": 4,
    "auto_memory_budget": False,  # its memory probe's model calls would be counted too
    "preprocess": {"size": 8, "resize": 8, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
    "defaults": {"nt_samples": 8},
}
CONFIG = parse_config(RAW)


class Counting(nn.Module):
    """small_cnn that counts its calls and can sleep in calls of more than one row."""

    def __init__(self, sleep: float = 0.0) -> None:
        super().__init__()
        self.net, self.sleep, self.calls = small_cnn(), sleep, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.sleep and x.shape[0] > 1:
            time.sleep(self.sleep)
        out: torch.Tensor = self.net(x)
        return out


def _request(**options: Any) -> pb.Request:
    deadline = options.pop("deadline_unix_ms", None)
    request = pb.Request(
        input=pb.Input(tensor=tensor_to_message(torch.randn(3, 8, 8))),
        explain=True,
        options=pb.ExplainOptions(seed=1, **options),
    )
    if deadline is not None:
        request.deadline_unix_ms = deadline
    return request


def _handle(service: ExplainService, *requests: pb.Request) -> list[pb.Response]:
    answers = service.handle([Incoming(r.SerializeToString(), from_grpc=True) for r in requests])
    return [pb.Response.FromString(a.body) for a in answers]  # type: ignore[arg-type]


def test_a_request_whose_deadline_passed_in_the_queue_is_not_computed() -> None:
    model = Counting()
    service = ExplainService(model, CONFIG, {}, torch.device("cpu"))
    late = _request(deadline_unix_ms=int(1000 * time.time()) - 1)
    fresh = _request(deadline_unix_ms=int(1000 * (time.time() + 600)))
    expired, answered = _handle(service, late, fresh)
    assert expired.error.grpc_code == "DEADLINE_EXCEEDED" and expired.error.http_status == 504
    assert expired.error.field == "deadline_unix_ms"
    assert not answered.HasField("error") and answered.rows == 8
    assert model.calls == 1 + 2  # one prediction call, two chunks of 4 rows: the fresh one only


def test_work_stops_at_a_chunk_boundary_once_every_client_has_given_up() -> None:
    model = Counting(sleep=0.05)
    service = ExplainService(model, CONFIG, {}, torch.device("cpu"))
    soon = int(1000 * (time.time() + 0.2))  # 64 samples = 16 chunks of 0.05 s: 0.8 s of work
    first, second = _handle(
        service,
        _request(nt_samples=64, deadline_unix_ms=soon),
        _request(nt_samples=64, deadline_unix_ms=soon),
    )
    for response in (first, second):
        assert response.error.grpc_code == "DEADLINE_EXCEEDED"
    assert model.calls < 1 + 32  # stopped early, also in the one-by-one retry


def test_the_response_timeout_budget_answers_before_torchserve_would_kill_the_worker() -> None:
    model = Counting(sleep=0.05)
    service = ExplainService(model, CONFIG, {}, torch.device("cpu"), response_timeout=0.25)
    long, short = pb.Request(input=_request().input), _request(nt_samples=64)
    predicted, cut = _handle(service, long, short)
    assert not predicted.HasField("error") and predicted.top_k  # a prediction in the same batch
    assert cut.error.grpc_code == "DEADLINE_EXCEEDED" and "responseTimeout" in cut.error.message
    assert service.budget.until is None  # the next batch starts without the old deadline
    (again,) = _handle(service, _request(nt_samples=4))
    assert not again.HasField("error")


def test_budgeted_keeps_guided_backprop_and_results_unchanged() -> None:
    model, x = small_cnn(), torch.randn(3, 8, 8)
    spec = make_spec(method="guided_backprop", nt_samples=5, stdevs=0.2)
    job = ExplainJob(inputs=x, target=1, spec=spec, seed=3)
    plain = Scheduler(model, 2).run([job])[0].attribution
    wrapped = Budgeted(model)
    budgeted = Scheduler(wrapped, 2).run([job])[0].attribution
    torch.testing.assert_close(budgeted, plain, rtol=0, atol=0)
    wrapped.start(time.monotonic() - 1, "stop")
    with pytest.raises(DeadlineExceeded, match="stop"):
        Scheduler(wrapped, 2).run([job])


def test_an_answer_above_max_response_bytes_is_refused_naming_the_encoding() -> None:
    config = parse_config({**RAW, "limits": {"max_response_bytes": 600}})
    service = ExplainService(small_cnn(), config, {}, torch.device("cpu"))
    big, small = _handle(
        service, _request(nt_samples=2), _request(nt_samples=2, encoding=pb.ENCODING_FLOAT16)
    )
    assert big.error.http_status == 400 and big.error.field == "options.encoding"
    assert "max_response_bytes" in big.error.message
    assert not small.HasField("error")  # 3×8×8 float16 fits


def test_an_input_shape_the_model_cannot_take_fails_alone() -> None:
    class NeedsEight(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[-1] < 8:
                raise RuntimeError("Output size is too small")
            return torch.stack([x.flatten(1).sum(1), -x.flatten(1).sum(1)], dim=1)

    service = ExplainService(NeedsEight(), CONFIG, {}, torch.device("cpu"))
    tiny = pb.Request(input=pb.Input(tensor=tensor_to_message(torch.randn(3, 2, 2))))
    fine = pb.Request(input=pb.Input(tensor=tensor_to_message(torch.randn(3, 8, 8))))
    refused, answered = _handle(service, tiny, fine)
    assert refused.error.http_status == 400 and refused.error.field == "input.tensor.shape"
    assert not answered.HasField("error")


def test_a_non_finite_baseline_is_refused() -> None:
    service = ExplainService(small_cnn(), CONFIG, {}, torch.device("cpu"))
    (response,) = _handle(
        service, _request(method=pb.METHOD_INTEGRATED_GRADIENTS, baseline=float("nan"))
    )
    assert response.error.field == "options.baseline"


class _Payload:
    """Unpickling this would create `marker`: the code a malicious state_dict would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


EAGER = {**RAW, "model_class": "smoothexplain.demo.net:ShapesNet"}
EAGER["model_kwargs"] = {"num_classes": 3, "width": 2}


def _malicious_model_dir(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    state: dict[str, Any] = dict(ShapesNet(num_classes=3, width=2).state_dict())
    state["payload"] = _Payload(marker)
    torch.save(state, tmp_path / "weights.pt")
    return tmp_path, marker


def test_a_state_dict_carrying_a_pickle_payload_is_refused(tmp_path: Path) -> None:
    model_dir, marker = _malicious_model_dir(tmp_path)
    with pytest.raises(Exception, match=r"Weights only load failed"):
        load_model(model_dir, parse_config(EAGER), torch.device("cpu"))
    assert not marker.exists()
    # The control: a plain torch.load would have run the payload.
    torch.load(model_dir / "weights.pt", weights_only=False)
    assert marker.exists()


def test_the_torchserve_handler_refuses_it_at_initialize(tmp_path: Path) -> None:
    model_dir, marker = _malicious_model_dir(tmp_path)
    context = SimpleNamespace(
        system_properties={"model_dir": str(model_dir), "gpu_id": None},
        model_yaml_config={"smoothexplain": EAGER, "responseTimeout": 30},
        manifest={"model": {"modelName": "evil"}},
    )
    with pytest.raises(Exception, match=r"Weights only load failed"):
        SmoothExplainHandler().initialize(context)
    assert not marker.exists()
