"""What this CPU computes fast: bf16 / fp16 autocast only pays on CPUs with native instructions.

On a CPU without them (AVX2, or AVX512 without its BF16 / FP16 extensions) PyTorch emulates the
low-precision matrix products, and bf16 autocast ran 18.5x slower than fp32 on ResNet-18 on such
a machine (issue 17). The decision comes from the CPU's feature flags (Linux `/proc/cpuinfo`):
AVX512-BF16 or AMX-BF16 for bf16, AVX512-FP16 or AMX-FP16 for fp16. "AVX512" alone does not
imply either.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from ..protocol.options import Precision

__all__ = ["CpuSupport", "SlowPrecisionWarning", "cpu_support", "slow_precision_reason"]

# Feature flags (as /proc/cpuinfo spells them) that make each precision native.
NATIVE_FLAGS: dict[Precision, frozenset[str]] = {
    Precision.BF16: frozenset({"avx512_bf16", "amx_bf16"}),
    Precision.FP16: frozenset({"avx512_fp16", "amx_fp16"}),
}
_REPORTED = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16", "amx_tile")


class SlowPrecisionWarning(UserWarning):
    """`explain()` was asked for a precision this CPU runs slower than fp32 (it still runs it;
    the server refuses it instead)."""


class CpuSupport:
    """The CPU's capability as PyTorch reports it and the precision-relevant feature flags
    (`flags` is None where the platform does not expose them)."""

    def __init__(self, capability: str, flags: frozenset[str] | None) -> None:
        self.capability, self.flags = capability, flags

    def native(self, precision: Precision) -> bool | None:
        """Whether `precision` runs natively; None when the flags are unknown."""
        if precision is Precision.FP32:
            return True
        if self.flags is None:
            return None
        return bool(self.flags & NATIVE_FLAGS[precision])

    def describe(self) -> str:
        """One line for logs, `archive --check` and benchmark records."""
        if self.flags is None:
            return f"CPU capability {self.capability} (feature flags unknown)"
        shown = [flag for flag in _REPORTED if flag in self.flags]
        fast = [p.value for p in (Precision.BF16, Precision.FP16) if self.native(p)]
        return (
            f"CPU capability {self.capability}, flags {' '.join(shown) or 'none'}; "
            f"native low precision: {', '.join(fast) or 'none (fp32 only)'}"
        )


def _cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str] | None:
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return None


@functools.cache
def cpu_support() -> CpuSupport:
    """This machine's `CpuSupport` (read once)."""
    return CpuSupport(torch.backends.cpu.get_cpu_capability(), _cpu_flags())


def slow_precision_reason(
    precision: Precision, device: torch.device, support: CpuSupport | None = None
) -> str:
    """Why `precision` would run slower than fp32 on `device`, or "" when it would not (fp32,
    a GPU, a CPU with the native instructions, or a CPU whose flags are unknown)."""
    if precision is Precision.FP32 or device.type != "cpu":
        return ""
    support = support or cpu_support()
    if support.native(precision) is not False:
        return ""
    needs = " or ".join(sorted(flag.upper() for flag in NATIVE_FLAGS[precision]))
    return (
        f"precision {precision.value} has no native support on this CPU ({support.capability}, "
        f"no {needs}): autocast would run many times slower than fp32 (18.5x on ResNet-18 on an "
        "AVX2 CPU); use fp32"
    )
