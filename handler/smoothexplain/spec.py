"""One validated, frozen description of an explain request: the only place arguments are checked.

The Python API, the TorchServe handler and the CLI all build an `ExplainSpec` through `make_spec`,
so a value is judged the same way wherever it comes from, and every error names its field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

import torch

from .errors import InvalidArgument

__all__ = [
    "FLOAT32_MAX",
    "MAX_SEED",
    "MAX_SIGMA",
    "MIN_CONFIDENCE",
    "MIN_SAMPLES_FOR_STOPPING",
    "MIN_VARGRAD_NOISE",
    "Bounds",
    "ExplainSpec",
    "IgRule",
    "IgSampling",
    "Method",
    "NoiseKind",
    "NoiseSampling",
    "NtType",
    "Precision",
    "finite_float32",
    "make_spec",
]

MAX_SEED = 2**63 - 1
MIN_SAMPLES_FOR_STOPPING = 8  # adaptive stopping never judges the error on fewer samples
FLOAT32_MAX = float(torch.finfo(torch.float32).max)  # the engine computes in float32
# Noise of ten times the whole input range already drowns any signal (the papers use 0.1-0.3);
# the cap keeps a mistyped 1e30 from turning every noisy input into inf. It bounds `sigma`, and
# `stdevs` at MAX_SIGMA times the widest range of the declared bounds. A sanity bound, not a
# cost: unlike the server limits in config.Limits there is nothing to configure.
MAX_SIGMA = 10.0
# AdaptGrad's sigma_i reaches (half the range) / (sqrt(2) erfinv(c)), which grows as 1/c and
# overflows float32 for tiny c. c >= 0.04 keeps it within the same MAX_SIGMA x range as
# Gaussian noise (erf(1 / (2 sqrt(2) MAX_SIGMA)) = 0.0399); the paper uses 0.95-0.999.
MIN_CONFIDENCE = 0.04
# VarGrad needs noise that moves the inputs: below about ten float32 steps of the range (the
# step is 1.19e-7 of a value) the noisy copies round back to the input and the variance is 0.
# Gaussian `sigma` (a fraction of the range) and `stdevs` (absolute; against the declared
# range, or against 1 without bounds) must reach it.
MIN_VARGRAD_NOISE = 1e-6


class Method(StrEnum):
    GRADIENT = "gradient"
    INPUT_X_GRADIENT = "input_x_gradient"
    INTEGRATED_GRADIENTS = "integrated_gradients"
    GUIDED_BACKPROP = "guided_backprop"


class NtType(StrEnum):
    NONE = "none"
    SMOOTHGRAD = "smoothgrad"
    SMOOTHGRAD_SQ = "smoothgrad_sq"
    VARGRAD = "vargrad"


class NoiseKind(StrEnum):
    GAUSSIAN = "gaussian"
    ADAPTIVE = "adaptive"


class NoiseSampling(StrEnum):
    IID = "iid"  # independent Gaussian draws
    ANTITHETIC = "antithetic"  # pairs (ε, −ε)
    QMC = "qmc"  # scrambled Sobol points through the inverse normal CDF


class Precision(StrEnum):
    FP32 = "fp32"
    BF16 = "bf16"  # autocast forward/backward; the gradients come back in float32
    FP16 = "fp16"


class IgRule(StrEnum):
    GAUSSLEGENDRE = "gausslegendre"
    RIEMANN_LEFT = "riemann_left"
    RIEMANN_RIGHT = "riemann_right"
    RIEMANN_MIDDLE = "riemann_middle"
    RIEMANN_TRAPEZOID = "riemann_trapezoid"


class IgSampling(StrEnum):
    """How smoothed IG spends its rows (see engine/joint.py for the estimators)."""

    GRID = "grid"  # a full n_steps path integral per noise sample (Captum's NoiseTunnel(IG))
    JOINT = "joint"  # one row per (noise, α) pair, α stratified; two α per sample for sq/vargrad


@dataclass(frozen=True)
class Bounds:
    """Input range [low, high]; scalars or tensors broadcastable to one input (e.g. (C, 1, 1))."""

    low: torch.Tensor
    high: torch.Tensor


@dataclass(frozen=True)
class ExplainSpec:
    method: Method = Method.GRADIENT
    nt_type: NtType = NtType.SMOOTHGRAD
    noise: NoiseKind = NoiseKind.GAUSSIAN
    nt_samples: int = 50
    stdevs: float | None = None
    sigma: float = 0.15
    bounds: Bounds | None = None
    confidence: float = 0.95
    n_steps: int = 50
    ig_rule: IgRule = IgRule.GAUSSLEGENDRE
    return_convergence_delta: bool = False
    noise_sampling: NoiseSampling = NoiseSampling.IID
    tolerance: float | None = None  # stop once the mean's relative standard error is below
    precision: Precision = Precision.FP32
    ig_sampling: IgSampling = IgSampling.GRID

    @property
    def samples(self) -> int:
        """Noise samples actually drawn: one clean pass when there is no noise tunnel."""
        return 1 if self.nt_type is NtType.NONE else self.nt_samples

    @property
    def joint_ig(self) -> bool:
        """Smoothed IG with joint (noise, α) sampling; plain IG always uses the n_steps rule."""
        return (
            self.method is Method.INTEGRATED_GRADIENTS
            and self.nt_type is not NtType.NONE
            and self.ig_sampling is IgSampling.JOINT
        )

    @property
    def steps(self) -> int:
        """Model rows per sample: the IG path points (joint: 1, or 2 for the product estimator
        of smoothgrad_sq/vargrad), or one."""
        if self.joint_ig:
            return 2 if self.nt_type in (NtType.SMOOTHGRAD_SQ, NtType.VARGRAD) else 1
        return self.n_steps if self.method is Method.INTEGRATED_GRADIENTS else 1

    @property
    def rows(self) -> int:
        return self.samples * self.steps


E = TypeVar("E", bound=StrEnum)


def _choice(field: str, value: object, kind: type[E]) -> E:
    allowed = [m.value for m in kind]
    if isinstance(value, kind):
        return value
    if isinstance(value, str) and value in allowed:
        return kind(value)
    raise InvalidArgument(f"{field} must be one of {allowed}, got {value!r}", field=field)


def _integer(field: str, value: object, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{field} must be an integer, got {value!r}", field=field)
    if value < low or (high is not None and value > high):
        upper = "" if high is None else f" and <= {high}"
        raise InvalidArgument(f"{field} must be >= {low}{upper}, got {value}", field=field)
    return value


def finite_float32(value: float, field: str) -> float:
    """`value` if float32 holds it as a finite number, else `InvalidArgument` naming `field`.

    The engine computes in float32: a double above its range (an IG baseline of 1e39) is
    finite here but becomes inf there, and every gradient after it NaN.
    """
    if not (math.isfinite(value) and abs(value) <= FLOAT32_MAX):
        raise InvalidArgument(
            f"{field} must be a finite float32 number (|x| <= {FLOAT32_MAX!r}), got {value!r}",
            field=field,
        )
    return value


def _real(
    field: str,
    value: object,
    *,
    low: float,
    open_low: bool = False,
    high: float | None = None,
    open_high: bool = False,
    why: str = "",
) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(f"{field} must be a number, got {value!r}", field=field)
    try:
        number = finite_float32(float(value), field)
    except OverflowError:  # an int beyond any float
        number = finite_float32(math.inf, field)
    too_low = number <= low if open_low else number < low
    too_high = high is not None and (number >= high if open_high else number > high)
    if too_low or too_high:
        left = "(" if open_low else "["
        right = ")" if open_high else "]"
        span = f"{left}{low}, {'inf' if high is None else f'{high:g}'}{right}"
        raise InvalidArgument(
            f"{field} must be a finite number in {span}{why}, got {value!r}", field=field
        )
    return number


def _bounds(value: object) -> Bounds | None:
    if value is None:
        return None
    if not isinstance(value, tuple | list) or len(value) != 2:
        raise InvalidArgument(
            f"bounds must be a pair (x_min, x_max), got {value!r}", field="bounds"
        )
    try:
        low, high = (torch.as_tensor(v, dtype=torch.float64) for v in value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise InvalidArgument(
            f"bounds must hold numbers or tensors: {error}", field="bounds"
        ) from None
    if not all(bool((v.abs() <= FLOAT32_MAX).all()) for v in (low, high)):  # NaN fails too
        raise InvalidArgument(
            f"bounds must be finite float32 numbers (|x| <= {FLOAT32_MAX!r})", field="bounds"
        )
    try:
        ordered = bool((high > low).all())
    except RuntimeError:
        raise InvalidArgument(
            "bounds x_min and x_max must have broadcastable shapes", field="bounds"
        ) from None
    if not ordered:
        raise InvalidArgument("bounds must satisfy x_min < x_max everywhere", field="bounds")
    return Bounds(low=low, high=high)


def _stdevs(value: object, bounds: Bounds | None) -> float | None:
    """Absolute noise, capped at MAX_SIGMA times the widest declared range (without bounds
    the range is each input's own, unknown here: then only float32 finiteness is checked)."""
    if value is None:
        return None
    if bounds is None:
        return _real("stdevs", value, low=0.0)
    widest = float((bounds.high - bounds.low).max())
    return _real(
        "stdevs",
        value,
        low=0.0,
        high=MAX_SIGMA * widest,
        why=f" ({MAX_SIGMA:g} x the input range {widest:g})",
    )


def _refuse_degenerate_vargrad(spec: ExplainSpec) -> None:
    """VarGrad of one sample, or of samples without noise, is 0 everywhere: refuse it rather
    than answer an all-zero map. (Other nt_types are well defined with one sample; nt_type
    none ignores nt_samples, as it is one clean pass.)"""
    if spec.nt_type is not NtType.VARGRAD:
        return
    if spec.nt_samples < 2:
        raise InvalidArgument(
            f"nt_samples must be >= 2 for nt_type='vargrad' (the variance of one sample is 0 "
            f"everywhere), got {spec.nt_samples}",
            field="nt_samples",
        )
    if spec.noise is not NoiseKind.GAUSSIAN:  # AdaptGrad's sigma_i comes from the data
        return
    if spec.stdevs is None:
        scale, least, field = spec.sigma, MIN_VARGRAD_NOISE, "sigma"
    else:
        widest = 1.0 if spec.bounds is None else float((spec.bounds.high - spec.bounds.low).max())
        scale, least, field = spec.stdevs, MIN_VARGRAD_NOISE * widest, "stdevs"
    if scale < least:
        raise InvalidArgument(
            f"{field} must be >= {least:.3g} for nt_type='vargrad' (smaller noise leaves the "
            f"float32 inputs unchanged, and their variance is 0 everywhere), got {scale!r}",
            field=field,
        )


def make_spec(
    *,
    method: object = "gradient",
    nt_type: object = "smoothgrad",
    noise: object = "gaussian",
    nt_samples: object = 50,
    stdevs: object = None,
    sigma: object = 0.15,
    bounds: object = None,
    confidence: object = 0.95,
    n_steps: object = 50,
    ig_rule: object = "gausslegendre",
    return_convergence_delta: object = False,
    noise_sampling: object = "iid",
    tolerance: object = None,
    precision: object = "fp32",
    ig_sampling: object = "grid",
) -> ExplainSpec:
    """Check every argument and return the frozen spec; `InvalidArgument` names a bad field."""
    chosen_method = _choice("method", method, Method)
    rule = _choice("ig_rule", ig_rule, IgRule)
    least_steps = 2 if rule is IgRule.RIEMANN_TRAPEZOID else 1
    if not isinstance(return_convergence_delta, bool):
        raise InvalidArgument(
            "return_convergence_delta must be a bool", field="return_convergence_delta"
        )
    if return_convergence_delta and chosen_method is not Method.INTEGRATED_GRADIENTS:
        raise InvalidArgument(
            "return_convergence_delta is only defined for method='integrated_gradients'",
            field="return_convergence_delta",
        )
    checked_bounds = _bounds(bounds)
    spec = ExplainSpec(
        method=chosen_method,
        nt_type=_choice("nt_type", nt_type, NtType),
        noise=_choice("noise", noise, NoiseKind),
        nt_samples=_integer("nt_samples", nt_samples, 1),
        stdevs=_stdevs(stdevs, checked_bounds),
        sigma=_real("sigma", sigma, low=0.0, high=MAX_SIGMA, why=" (a fraction of the range)"),
        bounds=checked_bounds,
        confidence=_real("confidence", confidence, low=MIN_CONFIDENCE, high=1.0, open_high=True),
        n_steps=_integer("n_steps", n_steps, least_steps),
        ig_rule=rule,
        return_convergence_delta=return_convergence_delta,
        noise_sampling=_choice("noise_sampling", noise_sampling, NoiseSampling),
        tolerance=None
        if tolerance is None
        else _real("tolerance", tolerance, low=0.0, open_low=True, high=1.0),
        precision=_choice("precision", precision, Precision),
        ig_sampling=_choice("ig_sampling", ig_sampling, IgSampling),
    )
    _refuse_degenerate_vargrad(spec)
    return spec
