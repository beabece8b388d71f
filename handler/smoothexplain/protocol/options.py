"""The explain options, defined once (issue 13).

One `Option` per explain option: its type, default, allowed values and its name on every
surface — the `explain()` / `make_spec` keyword, the proto `ExplainOptions` field, the CLI flag
and the model-config `defaults:` key. `make_spec`, the model-config defaults, the proto ⇄ spec
translation, the client's keywords and the CLI flags are all derived from `OPTIONS`, so adding
an option is one entry here plus its engine code. Free of torch: the client imports it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .._proto.smoothexplain.v1 import explain_pb2 as pb
from .errors import InvalidArgument

__all__ = [
    "CAM_METHODS",
    "ENUM_OPTIONS",
    "FLOAT32_MAX",
    "MAX_SEED",
    "MAX_SIGMA",
    "MIN_CONFIDENCE",
    "OPTIONS",
    "CamResolution",
    "Encoding",
    "IgRule",
    "IgSampling",
    "MemoryFormat",
    "Method",
    "NoiseKind",
    "NoiseSampling",
    "NtType",
    "Option",
    "Precision",
    "enum_from_proto",
    "enum_to_proto",
    "finite",
    "from_proto",
    "option",
    "refuse_unknown",
    "to_proto",
]

MAX_SEED = 2**63 - 1  # fits a signed 64-bit integer wherever the seed ends up
FLOAT32_MAX = 3.4028234663852886e38  # the engine computes in float32
# Noise of ten times the whole input range already drowns any signal (the papers use 0.1-0.3);
# the cap keeps a mistyped 1e30 from turning every noisy input into inf.
MAX_SIGMA = 10.0
# AdaptGrad's sigma_i reaches (half the range) / (sqrt(2) erfinv(c)), which grows as 1/c:
# c >= 0.04 keeps it within MAX_SIGMA x the range (erf(1 / (2 sqrt(2) MAX_SIGMA)) = 0.0399).
MIN_CONFIDENCE = 0.04


class Method(StrEnum):
    GRADIENT = "gradient"
    INPUT_X_GRADIENT = "input_x_gradient"
    INTEGRATED_GRADIENTS = "integrated_gradients"
    GUIDED_BACKPROP = "guided_backprop"
    GRAD_CAM = "grad_cam"
    GRAD_CAM_PLUS_PLUS = "grad_cam_plus_plus"
    LAYER_GRADIENT_X_ACTIVATION = "layer_gradient_x_activation"
    GUIDED_GRAD_CAM = "guided_grad_cam"  # guided backprop × the upsampled Grad-CAM


# The class-activation maps: read at a layer (`layer`), not at the input.
CAM_METHODS = frozenset(
    {
        Method.GRAD_CAM,
        Method.GRAD_CAM_PLUS_PLUS,
        Method.LAYER_GRADIENT_X_ACTIVATION,
        Method.GUIDED_GRAD_CAM,
    }
)


class CamResolution(StrEnum):
    """Where a class-activation map is returned: upsampled to the input, or at its layer."""

    INPUT = "input"  # bilinear, (N, 1, H, W) of the input
    LAYER = "layer"  # (N, 1, h, w) of the layer


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


class MemoryFormat(StrEnum):
    """Layout of the model passes (engine/layout.py): a server-side choice, not on the wire."""

    CONTIGUOUS = "contiguous"  # NCHW
    CHANNELS_LAST = "channels_last"  # NHWC: oneDNN's faster convolutions on CPU
    AUTO = "auto"  # the faster of the two, measured once per model and input shape


class Encoding(StrEnum):
    """How the server returns the map (the Python `explain()` returns a tensor)."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"
    PNG = "png"
    FLOAT32_AND_PNG = "float32_and_png"


@dataclass(frozen=True)
class Option:
    """One explain option. `kind` is int, float, bool, str or a StrEnum; a surface name of "" means
    the option is not offered there."""

    name: str  # make_spec / explain() keyword and ExplainSpec field
    kind: type
    default: object  # explain()'s default (Captum's vocabulary and values)
    help: str
    low: float | None = None  # numeric range; None: unbounded on that side
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    unit: str = ""  # what the range is measured in, for error messages
    proto: str = ""  # ExplainOptions field ("" = not on the wire)
    flag: str = ""  # CLI flag ("" = not in the CLI)
    config: bool = False  # a model-config `defaults:` key
    spec: bool = True  # an ExplainSpec field (False: the request carries it beside the spec)
    ig_only: bool = False  # applies to integrated gradients only (echoed for IG only)
    cam_only: bool = False  # applies to the class-activation maps only (echoed for them only)
    python: bool = True  # an `explain()` keyword
    server_key: str = ""  # a top-level key of the model-config's `smoothexplain:` section

    @property
    def choices(self) -> list[str]:
        """The allowed names of an enum option; [] for the others."""
        if isinstance(self.kind, type) and issubclass(self.kind, StrEnum):
            return [str(member.value) for member in self.kind]
        return []

    def span(self) -> str:
        """The allowed range in interval notation, e.g. "[0.04, 1)" or "[1, inf)"."""

        def shown(bound: float) -> str:
            return str(int(bound)) if self.kind is int else f"{bound:g}"

        left = "(" if self.open_low or self.low is None else "["
        right = ")" if self.open_high or self.high is None else "]"
        low = "-inf" if self.low is None else shown(self.low)
        high = "inf" if self.high is None else shown(self.high)
        return f"{left}{low}, {high}{right}"


def _enum(name: str, kind: type[StrEnum], help: str, default: str = "", **more: Any) -> Option:
    """An enum option on every surface; its default is `default`, else the first member."""
    chosen = default or next(iter(kind)).value
    return Option(name, kind, chosen, help, proto=name, flag=_flag(name), config=True, **more)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


OPTIONS: tuple[Option, ...] = (
    _enum("method", Method, "base attribution method"),
    _enum(
        "nt_type",
        NtType,
        "noise tunnel aggregate: none, smoothgrad (mean), smoothgrad_sq, vargrad",
        default="smoothgrad",
    ),
    _enum("noise", NoiseKind, "gaussian (one sigma) or adaptive (AdaptGrad's per-feature sigma)"),
    Option(
        "nt_samples",
        int,
        50,
        "noise samples per input",
        low=1,
        proto="nt_samples",
        flag="--nt-samples",
        config=True,
    ),
    Option(
        "stdevs",
        float,
        None,
        "absolute noise std (wins over sigma)",
        low=0.0,
        proto="stdevs",
        flag="--stdevs",
    ),
    Option(
        "sigma",
        float,
        0.15,
        "noise std as a fraction of the input range",
        low=0.0,
        high=MAX_SIGMA,
        unit="a fraction of the range",
        proto="sigma",
        flag="--sigma",
        config=True,
    ),
    Option(
        "confidence",
        float,
        0.95,
        "AdaptGrad confidence c",
        low=MIN_CONFIDENCE,
        high=1.0,
        open_high=True,
        proto="confidence",
        flag="--confidence",
        config=True,
    ),
    Option(
        "n_steps",
        int,
        50,
        "integrated gradients path points",
        low=1,
        proto="n_steps",
        flag="--n-steps",
        config=True,
        ig_only=True,
    ),
    _enum("ig_rule", IgRule, "integrated gradients quadrature rule", ig_only=True),
    Option(
        "return_convergence_delta",
        bool,
        False,
        "integrated gradients convergence delta",
        proto="return_convergence_delta",
        flag="--convergence-delta",
        ig_only=True,
    ),
    _enum(
        "noise_sampling",
        NoiseSampling,
        "how noise samples are drawn: iid, antithetic pairs or scrambled Sobol (qmc)",
    ),
    Option(
        "tolerance",
        float,
        None,
        "stop drawing samples once the estimated relative error is <= this",
        low=0.0,
        open_low=True,
        high=1.0,
        proto="tolerance",
        flag="--tolerance",
    ),
    _enum("precision", Precision, "autocast of the model passes"),
    _enum(
        "ig_sampling",
        IgSampling,
        "smoothed IG: grid (n_steps rows per noise sample) or joint (one row per sample)",
        ig_only=True,
    ),
    Option(
        "layer",
        str,
        None,
        "class-activation maps: the module read, by its name in the model (default: the last "
        "module with a 4-D output that runs once per forward and is not 1 x 1, found per input "
        "shape and echoed; asked of an input method: refused naming it)",
        proto="layer",
        flag="--layer",
        config=True,
        cam_only=True,
    ),
    _enum(
        "cam_resolution",
        CamResolution,
        "class-activation maps: upsampled bilinearly to the input, or at the layer's own size "
        "(layer asked of an input method: refused naming it)",
        cam_only=True,
    ),
    Option(
        "seed",
        int,
        None,
        "same seed, same attribution (default: a fresh one)",
        low=0,
        high=MAX_SEED,
        proto="seed",
        flag="--seed",
        spec=False,
    ),
    Option(
        "baseline",
        float,
        None,
        "constant IG baseline (model-input units; default 0)",
        proto="baseline",
        flag="--baseline",
        spec=False,
        ig_only=True,
    ),
    Option(
        "encoding",
        Encoding,
        "float32",
        "how the server returns the map",
        proto="encoding",
        config=True,
        spec=False,
        python=False,
    ),
    Option(
        "memory_format",
        MemoryFormat,
        "contiguous",
        "layout of the model passes: contiguous (NCHW), channels_last (NHWC) or auto (the "
        "faster, measured once per model and input shape)",
        spec=False,
        server_key="memory_format",
    ),
)

_BY_NAME: Mapping[str, Option] = {o.name: o for o in OPTIONS}


def option(name: str) -> Option:
    """The table entry of `name` (KeyError for an unknown name)."""
    return _BY_NAME[name]


# ExplainOptions field → its proto enum; every enum's values share the prefix of its
# *_UNSPECIFIED value, which means "the model's configured default".
ENUM_OPTIONS: dict[str, Any] = {
    o.proto: getattr(pb, o.kind.__name__.removesuffix("Kind"))
    for o in OPTIONS
    if o.proto and o.choices
}


def _prefix(enum: Any) -> str:
    (unspecified,) = [n for n in enum.keys() if n.endswith("_UNSPECIFIED")]  # noqa: SIM118
    return str(unspecified).removesuffix("UNSPECIFIED")


def enum_to_proto(name: str, value: object) -> int:
    """`"integrated_gradients"` → METHOD_INTEGRATED_GRADIENTS for option `name`; None → 0, the
    UNSPECIFIED default. Anything else is `InvalidArgument` naming `options.<name>`."""
    if value is None:
        return 0
    allowed = option(name).choices
    if not isinstance(value, str) or value not in allowed:
        field = f"options.{name}"
        raise InvalidArgument(f"{field} must be one of {allowed}, got {value!r}", field=field)
    enum = ENUM_OPTIONS[name]
    number: int = enum.Value(_prefix(enum) + value.upper())
    return number


def enum_from_proto(name: str, number: int) -> str | None:
    """METHOD_INTEGRATED_GRADIENTS → `"integrated_gradients"`; None for UNSPECIFIED. A number
    the enum does not have is `InvalidArgument` naming `options.<name>`."""
    enum = ENUM_OPTIONS[name]
    try:
        label: str = enum.Name(number)
    except ValueError:
        allowed = [n for n in enum.keys() if not n.endswith("UNSPECIFIED")]  # noqa: SIM118
        field = f"options.{name}"
        raise InvalidArgument(
            f"{field} must be one of {allowed}, got {number}", field=field
        ) from None
    return None if label.endswith("_UNSPECIFIED") else label.removeprefix(_prefix(enum)).lower()


def finite(number: float) -> bool:
    """Whether float32 holds `number` as a finite value."""
    return math.isfinite(number) and abs(number) <= FLOAT32_MAX


def from_proto(message: pb.ExplainOptions) -> dict[str, object]:
    """Every wire option's value as the Python API names it: an enum's name, a scalar, or None
    where the request leaves it to the model's default (an UNSPECIFIED enum, an unset
    optional field). `InvalidArgument` for an enum number the proto does not define."""
    values: dict[str, object] = {}
    for entry in OPTIONS:
        if not entry.proto:
            continue
        if entry.choices:
            values[entry.name] = enum_from_proto(entry.proto, getattr(message, entry.proto))
        elif entry.kind is bool:  # a plain proto3 bool: false is the default
            values[entry.name] = getattr(message, entry.proto) or None
        else:
            set_ = message.HasField(entry.proto)  # type: ignore[arg-type]
            values[entry.name] = getattr(message, entry.proto) if set_ else None
    return values


def refuse_unknown(values: Mapping[str, object]) -> None:
    """TypeError naming the keys of `values` that are no wire option."""
    unknown = sorted(set(values) - {o.name for o in OPTIONS if o.proto})
    if unknown:
        raise TypeError(f"unknown explain options {unknown}")


def to_proto(values: Mapping[str, object]) -> pb.ExplainOptions:
    """ExplainOptions holding `values` (Python names; None or absent: unset). Unknown names are
    a TypeError; a value the field cannot hold is `InvalidArgument` naming `options.<name>`."""
    refuse_unknown(values)
    message = pb.ExplainOptions()
    for name, value in values.items():
        entry, field = option(name), f"options.{name}"
        if value is None:
            continue
        if entry.choices:
            setattr(message, entry.proto, enum_to_proto(name, getattr(value, "value", value)))
            continue
        try:
            setattr(message, entry.proto, value)
        except (TypeError, ValueError) as error:
            raise InvalidArgument(f"{field}: {error}", field=field) from None
    return message
