"""Guided backprop leaves the model as it was, and refuses what it cannot apply to."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch
from google.protobuf import json_format
from torch import nn

import smoothexplain
from smoothexplain import explain
from smoothexplain._proto.smoothexplain.v1 import explain_pb2 as pb
from smoothexplain.serving.budget import Budgeted
from smoothexplain.serving.codec import message_to_tensor, tensor_to_message
from smoothexplain.serving.config import parse_config
from smoothexplain.serving.service import ExplainService, Incoming

from .guided_models import KINDS, cnn, inputs, quiet_script, quiet_trace

_HOOKS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
)


def _hooks(model: nn.Module) -> int:
    return sum(len(getattr(m, name)) for m in model.modules() for name in _HOOKS)


def _global_hooks() -> int:
    module = torch.nn.modules.module
    return sum(
        len(hooks)
        for hooks in (
            module._global_forward_hooks,
            module._global_forward_pre_hooks,
            module._global_backward_hooks,
            module._global_backward_pre_hooks,
        )
    )


def _behaviour(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    rows = inputs().requires_grad_(True)
    out = model(rows)
    (grad,) = torch.autograd.grad(out[:, 2].sum(), rows)
    return out.detach(), grad


def _guided(model: Callable[[torch.Tensor], torch.Tensor], **kw: object) -> torch.Tensor:
    out = explain(model, inputs(), 1, method="guided_backprop", **kw)  # type: ignore[arg-type]
    assert isinstance(out, torch.Tensor)
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_the_model_is_left_exactly_as_it_was(kind: str) -> None:
    model = cnn(kind)
    before, state = _behaviour(model), {k: v.clone() for k, v in model.state_dict().items()}
    modes = torch._C._len_torch_function_stack()
    _guided(model, nt_samples=3, seed=1)
    after = _behaviour(model)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert _hooks(model) == 0 and _global_hooks() == 0
    assert torch._C._len_torch_function_stack() == modes
    assert not model.training


def test_a_forward_that_raises_leaves_nothing_behind() -> None:
    class Breaks(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = cnn("F.relu")

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.inner(x)
            raise RuntimeError("broken model")

    model = Breaks()
    before = _behaviour(model.inner)
    with pytest.raises(RuntimeError, match="broken model"):
        _guided(model)
    assert torch._C._len_torch_function_stack() == 0
    after = _behaviour(model.inner)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    gradient = explain(model.inner, inputs(), 1, method="gradient", nt_type="none")
    assert isinstance(gradient, torch.Tensor)
    torch.testing.assert_close(gradient, explain(cnn("F.relu"), inputs(), 1, nt_type="none"))


class _Counting(nn.Module):
    """Counts the calls reaching `inner` (a model pass the refusal must not make)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out: torch.Tensor = self.inner(x)
        return out


def _scripted_models() -> dict[str, nn.Module]:
    traced = quiet_trace(cnn("nn.ReLU"), inputs(1))
    return {
        "traced": traced,
        "scripted": quiet_script(cnn("nn.ReLU")),
        "traced, behind Budgeted": Budgeted(traced),
        "traced, as a submodule of an eager model": nn.Sequential(traced, nn.Identity()),
    }


@pytest.mark.parametrize("name", list(_scripted_models()))
def test_torchscript_is_refused_before_any_model_pass(name: str) -> None:
    model = _Counting(_scripted_models()[name])
    with pytest.raises(smoothexplain.InvalidArgument) as info:
        _guided(model, nt_samples=4, seed=0)
    assert info.value.field == "method"
    assert "TorchScript" in info.value.message and "eager" in info.value.message
    assert model.calls == 0


def test_a_torchscript_function_is_refused() -> None:
    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x.flatten(1)[:, :5])

    function = quiet_trace(forward, inputs(1))  # type: ignore[arg-type]
    with pytest.raises(smoothexplain.InvalidArgument, match="TorchScript") as info:
        _guided(function)
    assert info.value.field == "method"


def test_torchscript_still_serves_the_other_methods() -> None:
    eager, traced = cnn("nn.ReLU"), quiet_trace(cnn("nn.ReLU"), inputs(1))
    for method in ("gradient", "input_x_gradient"):
        kw = {"method": method, "nt_samples": 3, "seed": 4}
        ours = explain(traced, inputs(), 1, **kw)  # type: ignore[arg-type]
        torch.testing.assert_close(ours, explain(eager, inputs(), 1, **kw))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "model",
    [
        nn.Sequential(nn.Flatten(), nn.Linear(192, 8), nn.Tanh(), nn.Linear(8, 3)),
        nn.Sequential(nn.Flatten(), nn.Linear(192, 8), nn.Hardtanh(0.0, 1.0), nn.Linear(8, 3)),
        nn.Sequential(nn.Flatten(), nn.Linear(192, 8), nn.LeakyReLU(), nn.Linear(8, 3)),
    ],
    ids=["tanh", "clip to [0, 1]", "leaky relu"],
)
def test_a_model_without_a_relu_type_unit_is_refused(model: nn.Module) -> None:
    with pytest.raises(smoothexplain.InvalidArgument, match="no ReLU-type unit") as info:
        _guided(model, nt_type="none")
    assert info.value.field == "method" and "method gradient" in info.value.message
    assert torch._C._len_torch_function_stack() == 0


# -- the data plane: the refusal is that request's answer only -------------------------------

CONFIG = parse_config(
    {
        "model_class": "tests.unit.analytic:small_cnn",
        "nt_samples_batch_size": 5,
        "preprocess": {"size": 8, "resize": 8, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "defaults": {"nt_samples": 4, "top_k": 3},
    }
)


def _service(model: nn.Module) -> ExplainService:
    return ExplainService(model, CONFIG, {}, torch.device("cpu"), "m")


def _request(x: torch.Tensor, method: pb.Method.ValueType) -> pb.Request:
    return pb.Request(
        input=pb.Input(tensor=tensor_to_message(x)),
        explain=True,
        options=pb.ExplainOptions(method=method, seed=3),
    )


def test_the_service_refuses_guided_backprop_on_torchscript_for_that_request_only() -> None:
    x = list(inputs(3))
    service = _service(quiet_trace(cnn("nn.ReLU"), inputs(1)))
    guided, gradient = _request(x[0], pb.METHOD_GUIDED_BACKPROP), _request(x[1], pb.METHOD_GRADIENT)
    answers = service.handle(
        [
            Incoming(guided.SerializeToString(), from_grpc=True),
            Incoming(gradient.SerializeToString(), from_grpc=True),
            Incoming(json_format.MessageToJson(guided).encode(), explain_path=True),
        ]
    )
    assert [a.status for a in answers] == [400, 200, 400]
    refused = pb.Response.FromString(answers[0].body)  # type: ignore[arg-type]
    assert refused.error.grpc_code == "INVALID_ARGUMENT"
    assert refused.error.field == "options.method" and "TorchScript" in refused.error.message
    assert json.loads(answers[2].body)["error"]["field"] == "options.method"
    (alone,) = service.handle([Incoming(gradient.SerializeToString(), from_grpc=True)])
    mate = pb.Response.FromString(answers[1].body)  # type: ignore[arg-type]
    assert mate.attribution == pb.Response.FromString(alone.body).attribution  # type: ignore[arg-type]
    assert message_to_tensor(mate.attribution).abs().sum() > 0


def test_the_service_serves_guided_backprop_on_the_eager_model() -> None:
    service = _service(cnn("nn.ReLU"))
    (answer,) = service.handle(
        [Incoming(_request(inputs(1)[0], pb.METHOD_GUIDED_BACKPROP).SerializeToString(), True)]
    )
    response = pb.Response.FromString(answer.body)  # type: ignore[arg-type]
    assert answer.status == 200 and not response.HasField("error")
    expected = explain(
        cnn("nn.ReLU"),
        inputs(1),
        response.target,
        method="guided_backprop",
        nt_samples=4,
        seed=3,
        sigma=0.15,
        bounds=service.bounds,
    )
    torch.testing.assert_close(message_to_tensor(response.attribution), expected[0])


class _CountingTanh(nn.Module):
    """A model without ReLU-type units that counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(192, 8), nn.Tanh(), nn.Linear(8, 3))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        result: torch.Tensor = self.net(x)
        return result


def test_a_known_refusal_costs_no_model_pass_and_no_shared_run() -> None:
    """TorchScript is known at load; a model without ReLUs once its first guided request
    failed: later guided requests are refused while decoding, so their batch-mates keep their
    shared run."""
    scripted = _service(quiet_trace(cnn("nn.ReLU"), inputs(1)))
    assert scripted.guided_refusal is not None and "TorchScript" in scripted.guided_refusal
    assert _service(cnn("nn.ReLU")).guided_refusal is None
    model = _CountingTanh()
    service = _service(model)
    x = inputs(2)
    guided = _request(x[0], pb.METHOD_GUIDED_BACKPROP).SerializeToString()
    (first,) = service.handle([Incoming(guided, from_grpc=True)])
    assert first.status == 400 and service.guided_refusal is not None
    before = model.calls
    (again,) = service.handle([Incoming(guided, from_grpc=True)])
    assert again.status == 400
    answer = pb.Response.FromString(again.body)  # type: ignore[arg-type]
    assert answer.error.field == "options.method" and "no ReLU-type unit" in answer.error.message
    assert model.calls == before  # refused before the prediction pass, too
