"""One validated, frozen description of an explain request: the only place arguments are checked.

The Python API, the TorchServe handler and the CLI all build an `ExplainSpec` through `make_spec`,
so a value is judged the same way wherever it comes from, and every error names its field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..protocol.checks import (
    check_integer,
    check_option,
    check_real,
    finite_float32,
)
from ..protocol.errors import InvalidArgument
from ..protocol.options import (
    CAM_METHODS,
    FLOAT32_MAX,
    MAX_SEED,
    MAX_SIGMA,
    MIN_CONFIDENCE,
    OPTIONS,
    CamResolution,
    IgRule,
    IgSampling,
    Method,
    NoiseKind,
    NoiseSampling,
    NtType,
    Option,
    Precision,
)

__all__ = [
    "FLOAT32_MAX",
    "MAX_SEED",
    "MAX_SIGMA",
    "MIN_CONFIDENCE",
    "MIN_SAMPLES_FOR_STOPPING",
    "MIN_VARGRAD_NOISE",
    "SPEC_OPTIONS",
    "Bounds",
    "CamReshape",
    "CamResolution",
    "ExplainSpec",
    "IgRule",
    "IgSampling",
    "Method",
    "NoiseKind",
    "NoiseSampling",
    "NtType",
    "Precision",
    "check_cam_reshape",
    "check_integer",
    "finite_float32",
    "make_spec",
]

MIN_SAMPLES_FOR_STOPPING = 8  # adaptive stopping never judges the error on fewer samples
# VarGrad needs noise that moves the inputs: below about ten float32 steps of the range (the
# step is 1.19e-7 of a value) the noisy copies round back to the input and the variance is 0.
# Gaussian `sigma` (a fraction of the range) and `stdevs` (absolute; against the declared
# range, or against 1 without bounds) must reach it.
MIN_VARGRAD_NOISE = 1e-6
SPEC_OPTIONS: tuple[Option, ...] = tuple(o for o in OPTIONS if o.spec)


@dataclass(frozen=True)
class Bounds:
    """Input range [low, high]; scalars or tensors broadcastable to one input (e.g. (C, 1, 1))."""

    low: torch.Tensor
    high: torch.Tensor


@dataclass(frozen=True)
class CamReshape:
    """How a token layer's (rows, tokens, channels) output becomes a (rows, channels, *grid)
    map: the first `skip_tokens` (a class token) dropped, the rest laid out row-major."""

    grid: tuple[int, int]
    skip_tokens: int = 0


@dataclass(frozen=True)
class ExplainSpec:
    """A checked request: build it with `make_spec` (one field per spec option of the table)."""

    method: Method
    nt_type: NtType
    noise: NoiseKind
    nt_samples: int
    stdevs: float | None
    sigma: float
    confidence: float
    n_steps: int
    ig_rule: IgRule
    return_convergence_delta: bool
    noise_sampling: NoiseSampling
    tolerance: float | None  # stop once the mean's relative standard error is below
    precision: Precision
    ig_sampling: IgSampling
    layer: str | None  # CAMs: the module read (None: the model's default layer)
    cam_resolution: CamResolution
    bounds: Bounds | None = None  # explain()'s input range; the server's from its preprocessing
    cam_reshape: CamReshape | None = None  # CAMs on a token layer: its grid

    def echo(self) -> dict[str, object]:
        """The options as they ran, by table name (enums as their names): what an answer
        echoes. Smoothed IG's sampling is `joint` only where it applied (plain IG: the grid)."""
        values: dict[str, object] = {
            o.name: getattr(getattr(self, o.name), "value", getattr(self, o.name))
            for o in SPEC_OPTIONS
        }
        values["ig_sampling"] = (IgSampling.JOINT if self.joint_ig else IgSampling.GRID).value
        return values

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
    def cam(self) -> bool:
        """A class-activation map: read at `layer` rather than at the input."""
        return self.method in CAM_METHODS

    @property
    def rows(self) -> int:
        return self.samples * self.steps


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


def check_cam_reshape(value: object) -> CamReshape | None:
    """`{grid: [rows, cols], skip_tokens: k}` (or a CamReshape) checked; None stays None."""
    if value is None:
        return None
    if isinstance(value, CamReshape):
        grid, skip = value.grid, value.skip_tokens
    elif isinstance(value, Mapping) and set(value) <= {"grid", "skip_tokens"} and "grid" in value:
        grid, skip = value["grid"], value.get("skip_tokens", 0)
    else:
        raise InvalidArgument(
            f"cam_reshape must be {{grid: [rows, cols], skip_tokens: k}}, got {value!r:.80}",
            field="cam_reshape",
        )
    if not isinstance(grid, tuple | list) or len(grid) != 2:
        raise InvalidArgument(
            f"cam_reshape.grid must be [rows, cols], got {grid!r:.80}", field="cam_reshape.grid"
        )
    rows, cols = (check_integer("cam_reshape.grid", side, 1) for side in grid)
    return CamReshape((rows, cols), check_integer("cam_reshape.skip_tokens", skip, 0))


def _stdevs(value: object, bounds: Bounds | None) -> float | None:
    """Absolute noise, capped at MAX_SIGMA times the widest declared range (without bounds
    the range is each input's own, unknown here: then only float32 finiteness is checked)."""
    if value is None:
        return None
    if bounds is None:
        return check_real("stdevs", value, low=0.0)
    widest = float((bounds.high - bounds.low).max())
    return check_real(
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


def make_spec(**values: object) -> ExplainSpec:
    """Check every option (`SPEC_OPTIONS`, plus `bounds` and `cam_reshape`) and return the
    frozen spec; unset options take the table's defaults. `InvalidArgument` names a bad field."""
    known = {o.name for o in SPEC_OPTIONS}
    unknown = sorted(set(values) - known - {"bounds", "cam_reshape"})
    if unknown:
        raise TypeError(f"make_spec() got unknown options {unknown}; known: {sorted(known)}")
    bounds = _bounds(values.get("bounds"))
    checked: dict[str, Any] = {
        o.name: check_option(o, values.get(o.name, o.default)) for o in SPEC_OPTIONS
    }
    if checked["ig_rule"] is IgRule.RIEMANN_TRAPEZOID:
        check_integer("n_steps", checked["n_steps"], 2)  # the trapezoid needs both ends
    if checked["return_convergence_delta"] and checked["method"] is not Method.INTEGRATED_GRADIENTS:
        raise InvalidArgument(
            "return_convergence_delta is only defined for method='integrated_gradients'",
            field="return_convergence_delta",
        )
    if checked["method"] not in CAM_METHODS:  # CAM options asked of an input method
        cams = ", ".join(sorted(m.value for m in CAM_METHODS))
        if checked["layer"] is not None:
            raise InvalidArgument(
                f"layer names the module a class-activation map reads; method="
                f"{checked['method'].value!r} reads none (methods with a layer: {cams})",
                field="layer",
            )
        if checked["cam_resolution"] is CamResolution.LAYER:
            raise InvalidArgument(
                f"cam_resolution='layer' applies to class-activation maps ({cams}), not to "
                f"method={checked['method'].value!r}",
                field="cam_resolution",
            )
    if (
        checked["method"] is Method.GUIDED_GRAD_CAM
        and checked["cam_resolution"] is CamResolution.LAYER
    ):
        raise InvalidArgument(
            "cam_resolution='layer' does not apply to method='guided_grad_cam', whose map is "
            "guided backprop (at the input) times the upsampled CAM; ask for 'input'",
            field="cam_resolution",
        )
    checked["stdevs"] = _stdevs(checked["stdevs"], bounds)
    reshape = check_cam_reshape(values.get("cam_reshape"))
    spec = ExplainSpec(**checked, bounds=bounds, cam_reshape=reshape)
    _refuse_degenerate_vargrad(spec)
    return spec
