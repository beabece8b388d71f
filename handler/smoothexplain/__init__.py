"""smoothexplain: smoothed gradient explanations (SmoothGrad, VarGrad, AdaptGrad) for serving.

The package is laid out in rooms that follow their dependencies (docs/layout.md):
`protocol` (options, errors, wire format; no torch), `engine` (pure torch), `serving` (the
data plane and the TorchServe adapter), `ops` (serve, launcher, probes), `client` (REST and gRPC
client and CLI) and `demo`. The names below load lazily, so `import smoothexplain.client`
needs neither torch nor TorchServe.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import _moved

if TYPE_CHECKING:
    from .engine import ExplainJob, JobResult, Scheduler
    from .engine.api import explain
    from .engine.folding import Folded, fold_batchnorm
    from .engine.spec import ExplainSpec, make_spec
    from .protocol.errors import InvalidArgument, SmoothExplainError
    from .protocol.options import IgRule, Method, NoiseKind, NtType

__all__ = [
    "ExplainJob",
    "ExplainSpec",
    "Folded",
    "IgRule",
    "InvalidArgument",
    "JobResult",
    "Method",
    "NoiseKind",
    "NtType",
    "Scheduler",
    "SmoothExplainError",
    "explain",
    "fold_batchnorm",
    "make_spec",
]

_WHERE = {
    "ExplainJob": "engine",
    "JobResult": "engine",
    "Scheduler": "engine",
    "explain": "engine.api",
    "Folded": "engine.folding",
    "fold_batchnorm": "engine.folding",
    "ExplainSpec": "engine.spec",
    "make_spec": "engine.spec",
    "InvalidArgument": "protocol.errors",
    "SmoothExplainError": "protocol.errors",
    "IgRule": "protocol.options",
    "Method": "protocol.options",
    "NoiseKind": "protocol.options",
    "NtType": "protocol.options",
}

_moved.install()


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
