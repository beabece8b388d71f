"""The `smoothexplain:` section of a model's model-config.yaml, parsed once into frozen objects."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ..engine.spec import SPEC_OPTIONS, CamReshape, ExplainSpec, check_cam_reshape, make_spec
from ..protocol.checks import check_integer, check_option
from ..protocol.errors import InvalidArgument, LimitExceeded
from ..protocol.options import OPTIONS, Option, option

__all__ = [
    "CONFIG_OPTIONS",
    "Defaults",
    "Limits",
    "Preprocess",
    "ServingConfig",
    "check_limits",
    "parse_config",
]

FORMATS = ("eager", "torchscript", "onnx")


@dataclass(frozen=True)
class Preprocess:
    size: int = 224  # the centre crop fed to the model
    resize: int = 256  # shorter image side before the crop
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)

    @property
    def channels(self) -> int:
        return len(self.mean)

    def bounds(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Model-input range of pixels in [0, 1] after normalisation, per channel."""
        low = tuple((0.0 - m) / s for m, s in zip(self.mean, self.std, strict=True))
        high = tuple((1.0 - m) / s for m, s in zip(self.mean, self.std, strict=True))
        return low, high


CONFIG_OPTIONS: tuple[Option, ...] = tuple(o for o in OPTIONS if o.config)
SPEC_NAMES = frozenset(o.name for o in SPEC_OPTIONS)


def _table_defaults() -> Mapping[str, object]:
    return {o.name: o.default for o in CONFIG_OPTIONS}


@dataclass(frozen=True)
class Defaults:
    """The model's defaults: one per explain option the table marks `config` (`defaults[name]`),
    and `top_k`. A request's unset option takes its model's default."""

    values: Mapping[str, object] = field(default_factory=_table_defaults)
    top_k: int = 5

    def __getitem__(self, name: str) -> object:
        return self.values[name]


@dataclass(frozen=True)
class Limits:
    max_nt_samples: int = 500
    max_n_steps: int = 300
    max_rows: int = 20_000  # nt_samples × n_steps of one request
    max_input_bytes: int = 10_000_000
    max_pixels: int = 25_000_000  # decoded image width × height (decompression bombs)
    max_aspect_ratio: float = 100.0  # an image's longer side over its shorter (thin strips)
    max_tensor_elements: int = 3 * 1024 * 1024
    max_top_k: int = 1000
    # Estimated compute of one batch's explanations (admission.py): a request above it alone
    # is refused, the dearest ones that do not fit beside their batch-mates get 503 at once.
    max_batch_seconds: float = 60.0
    # One encoded answer; TorchServe restarts the worker on an answer above its
    # max_response_size (32 MiB in ops/config.properties), so stay below that.
    max_response_bytes: int = 30_000_000


def check_limits(spec: ExplainSpec, limits: Limits, prefix: str = "options.") -> None:
    """`LimitExceeded` naming the field (`prefix` + option) when `spec` costs more than the
    server allows."""
    for name, limit in (("nt_samples", "max_nt_samples"), ("n_steps", "max_n_steps")):
        value, most = getattr(spec, name), getattr(limits, limit)
        if value > most:
            raise LimitExceeded(
                f"{prefix}{name} must be <= {most} (server limit {limit}), got {value}",
                field=f"{prefix}{name}",
            )
    if spec.rows > limits.max_rows:
        raise LimitExceeded(
            f"{prefix}nt_samples × {prefix}n_steps = {spec.rows} rows, above "
            f"the server limit max_rows={limits.max_rows}",
            field=f"{prefix}nt_samples",
        )


def _check_defaults(defaults: Defaults, limits: Limits) -> None:
    """The model's defaults must make a request that can run: what a request that sets no
    option gets is judged at load, not blamed on the first client (errors name `defaults.*`)."""
    values = {k: v for k, v in defaults.values.items() if k in SPEC_NAMES}
    try:
        cam = {k: values.pop(k) for k in ("layer", "cam_resolution") if k in values}
        spec = make_spec(**values)
        if cam:  # CAM defaults are for CAM requests: checked on one whatever the method
            as_cam = make_spec(**(values if spec.cam else {**values, "method": "grad_cam"}), **cam)
            spec = as_cam if spec.cam else spec
    except InvalidArgument as error:
        raise InvalidArgument(
            f"defaults.{error.message}", field=f"defaults.{error.field}"
        ) from None
    check_limits(spec, limits, prefix="defaults.")
    if defaults.top_k > limits.max_top_k:
        raise InvalidArgument(
            f"defaults.top_k must be <= {limits.max_top_k} (limits.max_top_k), "
            f"got {defaults.top_k}",
            field="defaults.top_k",
        )


@dataclass(frozen=True)
class ServingConfig:
    format: str = "eager"
    model_class: str = ""  # "package.module:ClassName" for eager models
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    weights: str = "weights.pt"  # state_dict (eager), TorchScript file, or ONNX file
    labels: str = "index_to_name.json"
    output: str = ""  # logits of a tuple/dict/object output: an index (digits), key or attribute
    nt_samples_batch_size: int = 32  # rows per forward + backward pass
    memory_budget_mb: int | None = None  # lowers the rows per pass to fit (probed per shape)
    # No memory_budget_mb, model on the CPU: a budget derived from free memory (memory.py).
    auto_memory_budget: bool = True
    tune_pass_rows: bool = False  # calls of the measured-fastest size (answers vary ~1e-7)
    keep_freed_memory: bool = True  # worker's malloc reuses freed activations (allocator.py)
    # Layout of the model passes (engine/layout.py); fixed, so every worker runs the same
    # kernels and a request with a seed gives the same bits whichever worker serves it.
    # channels_last: 0.55-0.83x the NCHW time on the demo and ImageNet CNNs measured here.
    memory_format: str = "channels_last"
    fold_batchnorm: bool = True  # BatchNorm folded into its convolution at load (folding.py)
    # CAMs on a token layer: {grid: [rows, cols], skip_tokens: k} (engine/cam.py)
    cam_reshape: CamReshape | None = None
    preprocess: Preprocess = Preprocess()
    defaults: Defaults = Defaults()
    limits: Limits = Limits()


def _section(cls: type[Any], raw: object, name: str) -> Any:
    """One section's dataclass; `name` "smoothexplain" is the top level, whose keys (like the
    value checks after parsing) are named without a prefix: `memory_format`, not
    `smoothexplain.memory_format`."""
    if raw is None:
        return cls()
    if not isinstance(raw, Mapping):
        raise InvalidArgument(f"model config '{name}' must be a mapping", field=name)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise InvalidArgument(
            f"model config '{name}' has unknown keys {unknown}; allowed: {sorted(known)}",
            field=name,
        )
    values: dict[str, Any] = {}
    for key, value in raw.items():
        default = getattr(cls(), key)
        if isinstance(default, tuple):
            value = tuple(float(v) for v in value)
        elif (
            isinstance(default, bool | int | float | str)
            and not isinstance(value, type(default))
            and not (isinstance(default, float) and isinstance(value, int))
        ):
            path = key if name == "smoothexplain" else f"{name}.{key}"
            raise InvalidArgument(
                f"model config '{path}' must be a {type(default).__name__}, got {value!r}",
                field=path,
            )
        values[key] = value
    return cls(**values)


def _defaults(raw: object) -> Defaults:
    """The `defaults:` section, each value checked against its option's table entry."""
    if raw is None:
        return Defaults()
    if not isinstance(raw, Mapping):
        raise InvalidArgument("model config 'defaults' must be a mapping", field="defaults")
    allowed = sorted([o.name for o in CONFIG_OPTIONS] + ["top_k"])
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise InvalidArgument(
            f"model config 'defaults' has unknown keys {unknown}; allowed: {allowed}",
            field="defaults",
        )
    top_k = check_integer("defaults.top_k", raw.get("top_k", Defaults.top_k), 1)
    values = dict(_table_defaults())
    for key, value in raw.items():
        if key != "top_k":
            values[key] = check_option(option(key), value, f"defaults.{key}")
            values[key] = getattr(values[key], "value", values[key])  # enums as their names
    return Defaults(values=values, top_k=top_k)


def parse_config(raw: Mapping[str, Any] | None) -> ServingConfig:
    """Build the config from the `smoothexplain` mapping of model-config.yaml (None: defaults)."""
    raw = dict(raw or {})
    nested = {"preprocess": Preprocess, "limits": Limits}
    parts = {key: _section(cls, raw.pop(key, None), key) for key, cls in nested.items()}
    parts["defaults"] = _defaults(raw.pop("defaults", None))
    parts["cam_reshape"] = check_cam_reshape(raw.pop("cam_reshape", None))
    top = _section(ServingConfig, raw, "smoothexplain")
    config = ServingConfig(**{**{f.name: getattr(top, f.name) for f in fields(top)}, **parts})
    if config.format not in FORMATS:
        raise InvalidArgument(f"format must be one of {list(FORMATS)}", field="format")
    if config.format == "eager" and ":" not in config.model_class:
        raise InvalidArgument(
            "eager models need model_class 'package.module:ClassName'", field="model_class"
        )
    if config.memory_budget_mb is not None:
        check_integer("memory_budget_mb", config.memory_budget_mb, 1)
    ratio = config.limits.max_aspect_ratio
    if isinstance(ratio, bool) or not (math.isfinite(ratio) and ratio >= 1):
        raise InvalidArgument(
            f"limits.max_aspect_ratio must be a number >= 1, got {ratio!r}",
            field="limits.max_aspect_ratio",
        )
    seconds = config.limits.max_batch_seconds
    if isinstance(seconds, bool) or not (math.isfinite(seconds) and seconds > 0):
        raise InvalidArgument(
            f"limits.max_batch_seconds must be a number > 0, got {seconds!r}",
            field="limits.max_batch_seconds",
        )
    check_integer("nt_samples_batch_size", config.nt_samples_batch_size, 1)
    check_option(option("memory_format"), config.memory_format, "memory_format")
    _check_defaults(config.defaults, config.limits)
    pre = config.preprocess
    if len(pre.mean) != len(pre.std) or not all(math.isfinite(v) for v in (*pre.mean, *pre.std)):
        raise InvalidArgument(
            "preprocess.mean and std need one finite number per channel each (equal lengths)",
            field="preprocess",
        )
    if not all(s > 0 for s in pre.std) or not pre.mean:
        raise InvalidArgument("preprocess.std must be > 0 in every channel", field="preprocess")
    for key in ("size", "resize"):
        value = getattr(pre, key)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
            raise InvalidArgument(
                f"preprocess.{key} must be an integer in [1, 4096], got {value!r}",
                field=f"preprocess.{key}",
            )
    return config
