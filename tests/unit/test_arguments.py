"""Every bad argument raises a ValueError subclass naming the argument and what is allowed."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from smoothexplain import InvalidArgument, explain

from .analytic import small_cnn

X = torch.zeros(2, 3, 8, 8)

BAD: list[tuple[dict[str, Any], str, str]] = [
    ({"method": "saliency"}, "method", "integrated_gradients"),
    ({"method": 3}, "method", "gradient"),
    ({"nt_type": "mean"}, "nt_type", "smoothgrad_sq"),
    ({"noise": "uniform"}, "noise", "adaptive"),
    ({"nt_samples": 0}, "nt_samples", ">= 1"),
    ({"nt_samples": 2.5}, "nt_samples", "integer"),
    ({"nt_samples": True}, "nt_samples", "integer"),
    ({"nt_samples_batch_size": 0}, "nt_samples_batch_size", ">= 1"),
    ({"nt_samples_batch_size": "8"}, "nt_samples_batch_size", ">= 1"),
    ({"stdevs": -0.1}, "stdevs", "[0.0, inf]"),
    ({"stdevs": float("nan")}, "stdevs", "finite"),
    ({"stdevs": 1e39}, "stdevs", "finite float32"),
    ({"stdevs": 10.5, "bounds": (0.0, 1.0)}, "stdevs", "[0.0, 10] (10 x the input range 1)"),
    (
        {
            "stdevs": 81.0,
            "bounds": (torch.zeros(3, 1, 1), torch.tensor([1.0, 8.0, 2.0]).view(3, 1, 1)),
        },
        "stdevs",
        "[0.0, 80]",
    ),
    ({"sigma": -1}, "sigma", "[0.0, 10]"),
    ({"sigma": 10.01}, "sigma", "[0.0, 10] (a fraction of the range)"),
    ({"sigma": 10**400}, "sigma", "finite float32"),
    ({"sigma": "big"}, "sigma", "number"),
    ({"bounds": (1.0, 0.0)}, "bounds", "x_min < x_max"),
    ({"bounds": (0.0,)}, "bounds", "pair"),
    ({"bounds": (0.0, float("inf"))}, "bounds", "finite"),
    ({"bounds": (0.0, 1e39)}, "bounds", "finite float32"),
    ({"bounds": (torch.tensor([0.0, float("nan")]), 1.0)}, "bounds", "finite float32"),
    ({"bounds": ("a", "b")}, "bounds", "numbers"),
    ({"confidence": 1.0}, "confidence", "[0.04, 1)"),
    ({"confidence": 0}, "confidence", "[0.04, 1)"),
    ({"confidence": 0.0399}, "confidence", "[0.04, 1)"),
    ({"tolerance": 1e39}, "tolerance", "finite float32"),
    ({"nt_type": "vargrad", "nt_samples": 1}, "nt_samples", ">= 2 for nt_type='vargrad'"),
    ({"nt_type": "vargrad", "sigma": 0.0}, "sigma", ">= 1e-06 for nt_type='vargrad'"),
    ({"nt_type": "vargrad", "sigma": 1e-45}, "sigma", "leaves the float32 inputs unchanged"),
    ({"nt_type": "vargrad", "stdevs": 0.0, "sigma": 0.2}, "stdevs", ">= 1e-06 for nt_type"),
    ({"nt_type": "vargrad", "stdevs": 1e-30}, "stdevs", "leaves the float32 inputs unchanged"),
    # Against the declared range: 1e-4 is below 1e-6 x 255.
    ({"nt_type": "vargrad", "stdevs": 1e-4, "bounds": (0.0, 255.0)}, "stdevs", ">= 0.000255"),
    ({"seed": -1}, "seed", "[0, "),
    ({"seed": 2**63}, "seed", "[0, "),
    ({"seed": 1.5}, "seed", "integer"),
    ({"n_steps": 0}, "n_steps", ">= 1"),
    ({"n_steps": 1, "ig_rule": "riemann_trapezoid"}, "n_steps", ">= 2"),
    ({"ig_rule": "simpson"}, "ig_rule", "riemann_middle"),
    ({"return_convergence_delta": True}, "return_convergence_delta", "integrated_gradients"),
    (
        {"return_convergence_delta": 1, "method": "integrated_gradients"},
        "return_convergence_delta",
        "bool",
    ),
    ({"baselines": "zeros", "method": "integrated_gradients"}, "baselines", "tensor"),
    ({"baselines": torch.zeros(5, 5), "method": "integrated_gradients"}, "baselines", "broadcast"),
]


@pytest.mark.parametrize(("kwargs", "field", "allowed"), BAD)
def test_bad_keyword_names_field_and_allowed_values(
    kwargs: dict[str, Any], field: str, allowed: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        explain(small_cnn(), X, 0, **kwargs)
    assert isinstance(info.value, ValueError)
    assert info.value.field == field
    assert field in str(info.value) and allowed in str(info.value)


@pytest.mark.parametrize(
    ("inputs", "allowed"),
    [
        ([[1.0]], "torch.Tensor"),
        (torch.zeros(2, 3, dtype=torch.int64), "floating-point"),
        (torch.zeros(3), "(N, ...)"),
        (torch.zeros(0, 3, 8, 8), "N >= 1"),
        (torch.full((1, 3, 8, 8), float("nan")), "NaN"),
    ],
)
def test_bad_inputs(inputs: Any, allowed: str) -> None:
    with pytest.raises(InvalidArgument, match="inputs") as info:
        explain(small_cnn(), inputs, 0)
    assert allowed in str(info.value)


@pytest.mark.parametrize(
    ("target", "allowed"),
    [
        ([0], "one entry per input (2)"),
        (-1, ">= 0"),
        ("cat", "int, a list of ints"),
        (torch.tensor([0.5, 1.0]), "integer tensor"),
        ([0, 1.5], "integers"),
        (7, "[0, 4]"),
    ],
)
def test_bad_target(target: Any, allowed: str) -> None:
    with pytest.raises(InvalidArgument, match="target") as info:
        explain(small_cnn(), X, target, nt_samples=2)
    assert info.value.field == "target" and allowed in str(info.value)


def test_model_must_be_callable() -> None:
    with pytest.raises(InvalidArgument, match="model"):
        explain("resnet", X, 0)  # type: ignore[arg-type]


def test_bad_baseline_shapes_are_checked_per_input_count() -> None:
    one_each = torch.zeros(2, 3, 8, 8)
    attr = explain(
        small_cnn(),
        X + 1,
        0,
        method="integrated_gradients",
        baselines=one_each,
        nt_type="none",
        n_steps=3,
    )
    assert attr.shape == X.shape
