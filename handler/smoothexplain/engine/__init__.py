"""The explanation engine: pure torch, no serving imports."""

from .scheduler import ExplainJob, JobResult, Scheduler, SchedulerStats

__all__ = ["ExplainJob", "JobResult", "Scheduler", "SchedulerStats"]
