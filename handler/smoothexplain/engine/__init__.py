"""The explanation engine: pure torch, no serving imports."""

from .guided import guided_refusal
from .scheduler import ExplainJob, JobResult, Scheduler, SchedulerStats

__all__ = ["ExplainJob", "JobResult", "Scheduler", "SchedulerStats", "guided_refusal"]
