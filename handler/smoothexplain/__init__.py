"""smoothexplain: smoothed gradient explanations (SmoothGrad, VarGrad, AdaptGrad) for serving."""

from .api import explain
from .engine import ExplainJob, JobResult, Scheduler
from .errors import InvalidArgument, SmoothExplainError
from .spec import ExplainSpec, IgRule, Method, NoiseKind, NtType, make_spec

__all__ = [
    "ExplainJob",
    "ExplainSpec",
    "IgRule",
    "InvalidArgument",
    "JobResult",
    "Method",
    "NoiseKind",
    "NtType",
    "Scheduler",
    "SmoothExplainError",
    "explain",
    "make_spec",
]
