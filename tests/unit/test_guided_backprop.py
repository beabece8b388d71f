"""Guided backprop on every kind of ReLU-type unit, against an independent reference rule."""

from __future__ import annotations

import io
import warnings

import onnx
import pytest
import torch
from captum.attr import GuidedBackprop
from onnx2torch import convert  # type: ignore[import-untyped]
from torch import nn

from smoothexplain import explain
from smoothexplain.engine.guided import GuidedModel

from .guided_models import KINDS, cnn, inputs, reference_of, upper_bound

TARGETS = [0, 3, 1]
NATIVE_BACKWARDS = ("ReluBackward", "HardtanhBackward", "ClampBackward", "ClampMinBackward")


def _guided(model: nn.Module, **kw: object) -> torch.Tensor:
    out = explain(model, inputs(), TARGETS, method="guided_backprop", **kw)  # type: ignore[arg-type]
    assert isinstance(out, torch.Tensor)
    return out


def _reference(kind: str, **kw: object) -> torch.Tensor:
    out = explain(reference_of(kind), inputs(), TARGETS, method="gradient", **kw)  # type: ignore[arg-type]
    assert isinstance(out, torch.Tensor)
    return out


def test_the_inputs_reach_every_side_of_the_units() -> None:
    pre = cnn("nn.ReLU")[0](inputs())
    assert bool((pre < 0).any() and ((pre > 0) & (pre < 6)).any() and (pre > 6).any())


@pytest.mark.parametrize("kind", KINDS)
def test_each_unit_gets_the_rule(kind: str) -> None:
    model = cnn(kind)
    ours = _guided(model, nt_type="none")
    torch.testing.assert_close(ours, _reference(kind, nt_type="none"))
    plain = explain(cnn(kind), inputs(), TARGETS, method="gradient", nt_type="none")
    assert isinstance(plain, torch.Tensor)
    assert (ours - plain).abs().max() > 1e-2 * plain.abs().max()  # the rule did something


@pytest.mark.parametrize("kind", KINDS)
def test_smoothed_guided_backprop_with_a_seed(kind: str) -> None:
    kw = {"nt_samples": 6, "stdevs": 0.5, "seed": 11, "nt_samples_batch_size": 4}
    torch.testing.assert_close(_guided(cnn(kind), **kw), _reference(kind, **kw))


@pytest.mark.parametrize("kind", ["nn.ReLU", "nn.ReLU6(inplace)", "Tensor.relu_", "F.relu6"])
def test_vargrad_of_guided_backprop(kind: str) -> None:
    kw = {"nt_samples": 5, "stdevs": 0.3, "seed": 2, "nt_type": "vargrad"}
    torch.testing.assert_close(_guided(cnn(kind), **kw), _reference(kind, **kw))


def _graph_nodes(out: torch.Tensor) -> list[str]:
    names, stack, seen = [], [out.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(type(node).__name__)
        stack.extend(parent for parent, _ in node.next_functions)
    return names


@pytest.mark.parametrize("kind", KINDS)
def test_every_unit_is_gated_exactly_once(kind: str) -> None:
    # nn.ReLU calls F.relu, which calls torch.relu: still one guided node per unit.
    rows = inputs().requires_grad_(True)
    nodes = _graph_nodes(GuidedModel(cnn(kind))(rows))
    assert nodes.count("_GuidedUnitBackward") == 2
    assert not [n for n in nodes if n.startswith(NATIVE_BACKWARDS)]


def test_a_unit_applied_to_the_output_of_a_unit_is_two_units() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.relu = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.relu(x - 1.0) - 0.5).sum(1, keepdim=True)

    rows = torch.randn(4, 3, requires_grad=True)
    assert _graph_nodes(GuidedModel(Twice())(rows)).count("_GuidedUnitBackward") == 2


@pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU:UserWarning")  # Captum's
def test_captum_parity_on_relu_modules() -> None:
    model = cnn("nn.ReLU")
    theirs = GuidedBackprop(model).attribute(inputs().requires_grad_(True), target=TARGETS)
    torch.testing.assert_close(_guided(model, nt_type="none"), theirs.detach())


def _onnx_converted(kind: str) -> tuple[nn.Module, list[str]]:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(cnn(kind), (inputs(1),), buffer, dynamo=False, opset_version=17)
    graph = onnx.load_from_string(buffer.getvalue())
    converted: nn.Module = convert(graph)
    return converted.eval(), [node.op_type for node in graph.graph.node]


@pytest.mark.parametrize(("kind", "op"), [("nn.ReLU", "Relu"), ("nn.ReLU6", "Clip")])
def test_onnx2torch_converted_relu_and_clip(kind: str, op: str) -> None:
    converted, ops = _onnx_converted(kind)
    assert ops.count(op) == 2 and upper_bound(kind) in (6.0, float("inf"))
    torch.testing.assert_close(_guided(converted, nt_type="none"), _reference(kind, nt_type="none"))
    kw = {"nt_samples": 4, "stdevs": 0.4, "seed": 5}
    torch.testing.assert_close(_guided(converted, **kw), _reference(kind, **kw))


def test_a_plain_function_model_gets_the_rule() -> None:
    model = cnn("torch.relu")

    def function(rows: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = model(rows)
        return out

    torch.testing.assert_close(
        _guided(function, nt_type="none"),  # type: ignore[arg-type]
        _reference("torch.relu", nt_type="none"),
    )


def test_bf16_guided_backprop_follows_the_rule() -> None:
    kw = {"nt_type": "none", "precision": "bf16"}
    torch.testing.assert_close(
        _guided(cnn("nn.ReLU6"), **kw), _reference("nn.ReLU6", **kw), rtol=0, atol=0
    )
