"""A served model described for the explorer's form: every wire option with its type, range,
the model's default and the server's limits, all derived from the options table.

`ModelFacts` is what the serving room reads from the model's model-config (its `defaults:`,
`limits:` and `preprocess:`); `describe` joins it to `OPTIONS`, so the form offers exactly the
options the API takes, pre-filled as a request that sets nothing would run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..protocol.options import CAM_METHODS, ENUM_OPTIONS, OPTIONS, Option, enum_to_proto

__all__ = ["EXPLORER_ENCODING", "LIMITED_BY", "ModelFacts", "describe", "form_options"]

# The explorer always asks for the float32 map: it draws the overlay and writes the .npy.
EXPLORER_ENCODING = "float32"
# Options whose upper bound a server limit lowers (serving/config.py's check_limits).
LIMITED_BY: Mapping[str, str] = {"nt_samples": "max_nt_samples", "n_steps": "max_n_steps"}


@dataclass(frozen=True)
class ModelFacts:
    """The parts of one model's model-config the form needs."""

    defaults: Mapping[str, object] = field(default_factory=dict)  # option name → default
    top_k: int = 5
    limits: Mapping[str, float] = field(default_factory=dict)  # Limits' fields by name
    size: int = 224  # the crop fed to the model
    resize: int = 256


def form_options() -> tuple[Option, ...]:
    """The options the form offers: every wire option except the answer's encoding."""
    return tuple(o for o in OPTIONS if o.proto and o.name != "encoding")


def _kind(entry: Option) -> str:
    if entry.choices:
        return "enum"
    return {bool: "bool", int: "int", float: "float", str: "str"}[entry.kind]


def _proto_names(entry: Option) -> list[str]:
    """The proto JSON spelling of each choice (what a curl Request carries)."""
    enum = ENUM_OPTIONS[entry.proto]
    return [str(enum.Name(enum_to_proto(entry.name, c))) for c in entry.choices]


def _high(entry: Option, limits: Mapping[str, float]) -> float | None:
    limit = limits.get(LIMITED_BY.get(entry.name, ""))
    if limit is None:
        return entry.high
    return limit if entry.high is None else min(entry.high, limit)


def _described(entry: Option, facts: ModelFacts) -> dict[str, Any]:
    default = facts.defaults.get(entry.name, entry.default)
    return {
        "name": entry.name,
        "kind": _kind(entry),
        "choices": entry.choices,
        "proto_choices": _proto_names(entry) if entry.choices else [],
        "default": getattr(default, "value", default),
        "low": entry.low,
        "high": _high(entry, facts.limits),
        "open_low": entry.open_low,
        "open_high": entry.open_high,
        "limit": LIMITED_BY.get(entry.name, ""),
        "help": entry.help,
        "ig_only": entry.ig_only,
        "cam_only": entry.cam_only,
        # the methods that read a layer (the form shows `layer`, `cam_resolution` for them)
        "cam_methods": sorted(m.value for m in CAM_METHODS) if entry.name == "method" else [],
        "flag": entry.flag,
        "proto": entry.proto,
    }


def describe(name: str, facts: ModelFacts) -> dict[str, Any]:
    """The JSON description of model `name` that `GET /api/models/{name}` answers."""
    return {
        "model": name,
        "options": [_described(o, facts) for o in form_options()],
        "top_k": {"default": facts.top_k, "high": facts.limits.get("max_top_k")},
        "limits": dict(facts.limits),
        "preprocess": {"size": facts.size, "resize": facts.resize},
    }
