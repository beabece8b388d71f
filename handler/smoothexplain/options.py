"""The explain options that are enums, and their one translation between the Python names
(`"integrated_gradients"`, as `make_spec`, `explain()` and the client take them) and the proto
enum values (`METHOD_INTEGRATED_GRADIENTS`). The first part of the options table (issue 13):
the service, its applied-options echo and the client all translate through here.
"""

from __future__ import annotations

from typing import Any

from ._proto.smoothexplain.v1 import explain_pb2 as pb
from .errors import InvalidArgument

__all__ = ["ENUM_OPTIONS", "enum_from_proto", "enum_to_proto"]

# ExplainOptions field (= the Python keyword) → its proto enum; every enum's values share the
# prefix of its *_UNSPECIFIED value, which means "the model's configured default".
ENUM_OPTIONS: dict[str, Any] = {
    "method": pb.Method,
    "nt_type": pb.NtType,
    "noise": pb.Noise,
    "ig_rule": pb.IgRule,
    "ig_sampling": pb.IgSampling,
    "noise_sampling": pb.NoiseSampling,
    "precision": pb.Precision,
    "encoding": pb.Encoding,
}


def _prefix(enum: Any) -> str:
    (unspecified,) = [n for n in enum.keys() if n.endswith("_UNSPECIFIED")]  # noqa: SIM118
    return str(unspecified).removesuffix("UNSPECIFIED")


def _names(option: str) -> list[str]:
    enum = ENUM_OPTIONS[option]
    prefix = _prefix(enum)
    return [n.removeprefix(prefix).lower() for n in enum.keys() if not n.endswith("UNSPECIFIED")]  # noqa: SIM118


def enum_to_proto(option: str, value: object) -> int:
    """`"integrated_gradients"` → METHOD_INTEGRATED_GRADIENTS for `option`; None → 0, the
    UNSPECIFIED default. Anything else is `InvalidArgument` naming `options.<option>`."""
    if value is None:
        return 0
    allowed = _names(option)
    if not isinstance(value, str) or value not in allowed:
        field = f"options.{option}"
        raise InvalidArgument(f"{field} must be one of {allowed}, got {value!r}", field=field)
    enum = ENUM_OPTIONS[option]
    number: int = enum.Value(_prefix(enum) + value.upper())
    return number


def enum_from_proto(option: str, number: int) -> str | None:
    """METHOD_INTEGRATED_GRADIENTS → `"integrated_gradients"`; None for UNSPECIFIED. A number
    the enum does not have is `InvalidArgument` naming `options.<option>`."""
    enum = ENUM_OPTIONS[option]
    try:
        name: str = enum.Name(number)
    except ValueError:
        allowed = [n for n in enum.keys() if not n.endswith("UNSPECIFIED")]  # noqa: SIM118
        field = f"options.{option}"
        raise InvalidArgument(
            f"{field} must be one of {allowed}, got {number}", field=field
        ) from None
    return None if name.endswith("_UNSPECIFIED") else name.removeprefix(_prefix(enum)).lower()
