"""BatchNorm folded into its convolution (engine/folding.py) and its use at model load."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from smoothexplain import explain
from smoothexplain.engine.folding import fold_batchnorm
from smoothexplain.serving.config import parse_config
from smoothexplain.serving.models import prepare_model


def _norm(channels: int) -> nn.BatchNorm2d:
    """An eval-mode BatchNorm whose statistics are far from the identity."""
    norm = nn.BatchNorm2d(channels)
    with torch.no_grad():
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.3, 2.0)
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.3, 0.3)
    return norm


class SamePadConv(nn.Conv2d):
    """Calls F.conv2d itself, as EfficientNet's same-padding convolutions do (fx traces it
    into a conv2d call on the module's weight attribute)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (1, 1, 1, 1)), self.weight, self.bias, self.stride)


class Shared(nn.Module):
    """One convolution called twice: folding either BatchNorm would change the other call."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.a, self.b = nn.Conv2d(3, 3, 3, padding=1), _norm(3), _norm(3)
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.b(self.conv(torch.relu(self.a(self.conv(x)))))
        return self.head(y.mean((2, 3)))


class Branchy(nn.Module):
    """Python control flow on a tensor's value: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm, self.head = nn.Conv2d(3, 4, 3), _norm(4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.conv(x))
        if y.sum() > 0:
            y = y * 2
        return self.head(y.mean((2, 3)))


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        _norm(8),
        nn.ReLU(),
        SamePadConv(8, 8, 3, bias=False),  # no bias: folding gives it one
        _norm(8),
        nn.ReLU(),
        _norm(8),  # after a ReLU: nothing to fold into
        nn.Conv2d(8, 6, 1),
        _norm(6),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
    ).eval()


def test_folding_keeps_scores_gradients_and_guided_maps_to_rounding() -> None:
    model = _net()
    before = copy.deepcopy(model.state_dict())
    folded = fold_batchnorm(model)
    assert folded.count == 3 and folded.left == "1 not after a foldable convolution"
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.model.modules()) == 1
    x = torch.rand(2, 3, 12, 12)
    torch.testing.assert_close(folded.model(x), model(x), rtol=1e-5, atol=1e-6)
    for method in ("gradient", "guided_backprop"):
        kw = {"method": method, "nt_samples": 3, "seed": 5, "stdevs": 0.1}
        plain = explain(model, x, 1, **kw)  # type: ignore[arg-type]
        fast = explain(folded.model, x, 1, **kw)  # type: ignore[arg-type]
        torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-6)
    after = model.state_dict()  # the caller's model is untouched
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        (Shared().eval(), "no BatchNorm follows a convolution it alone reads"),
        (Branchy().eval(), "torch.fx cannot trace it"),
        (_net().train(), "its BatchNorms are in training mode"),
    ],
)
def test_what_cannot_be_folded_is_left_as_it_is_with_the_reason(
    model: nn.Module, reason: str
) -> None:
    folded = fold_batchnorm(model)
    assert folded.model is model and folded.count == 0
    assert folded.left.startswith(reason)


class Counting(nn.Module):
    """Python state in forward (a count shared by every copy): fx bakes the count in at
    trace time, so the traced copy silently differs; serving's load check must catch what
    the tracer could not."""

    calls = 0

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm, self.head = nn.Conv2d(3, 4, 3), _norm(4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        Counting.calls += 1
        return self.head(self.norm(self.conv(x)).mean((2, 3))) * Counting.calls


def test_serving_keeps_the_model_whose_folded_copy_scores_differently() -> None:
    model = Counting().eval()
    config = parse_config({"model_class": "m:M", "preprocess": {"size": 8, "resize": 8}})
    served, said = prepare_model(model, config)
    assert served is model and said.startswith("BatchNorm2d not folded: the folded model's")


def test_a_wrapper_left_in_training_mode_still_folds_its_eval_batchnorms() -> None:
    """Only the BatchNorms' own mode counts (bench/engine.py's wrapper is never put in eval)."""
    wrapper = nn.Sequential(_net())  # a fresh Sequential: training mode, its inner net eval
    assert wrapper.training and fold_batchnorm(wrapper).count == 3


def test_a_model_without_batchnorm_is_returned_as_it_is() -> None:
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten())
    assert fold_batchnorm(model) == type(fold_batchnorm(model))(model, 0, "")


def test_serving_folds_by_default_and_says_what_it_did() -> None:
    model = _net()
    served, said = prepare_model(model, parse_config({"model_class": "m:M"}))
    assert served is not model and said.endswith("before it: 3; 1 not after a foldable convolution")
    off = parse_config({"model_class": "m:M", "fold_batchnorm": False})
    assert prepare_model(model, off) == (model, "BatchNorm2d not folded (fold_batchnorm: false)")
    script = parse_config({"format": "torchscript", "weights": "m.pt"})
    assert prepare_model(model, script)[1].startswith("BatchNorm2d not folded: TorchScript")
    assert prepare_model(nn.Linear(2, 2), off)[1] == ""  # nothing to say
