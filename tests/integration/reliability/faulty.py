"""Test-only model classes for fault-injection archives (shipped inside them, never elsewhere).

TorchServe imports this file from the unpacked archive, so it is a plain top-level module.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from smoothexplain.demo.net import ShapesNet

__all__ = ["FaultyShapesNet"]


class FaultyShapesNet(ShapesNet):
    """The demo CNN (same weights) that fails on demand.

    oom_above: a call with more rows raises torch.OutOfMemoryError (as a full GPU would);
    slow_above / sleep: a call with more rows first sleeps `sleep` seconds, so explanations
    take long enough to be interrupted while predictions stay fast;
    calls_file: one line per call ("call <rows>" or "oom <rows>") for the tests to count.
    """

    def __init__(
        self,
        num_classes: int,
        width: int = 16,
        oom_above: int = 0,
        slow_above: int = 0,
        sleep: float = 0.0,
        calls_file: str = "",
    ) -> None:
        super().__init__(num_classes, width)
        self.oom_above, self.slow_above, self.sleep = oom_above, slow_above, sleep
        self.calls_file = Path(calls_file) if calls_file else None

    def _note(self, line: str) -> None:
        # The worker's BatchNorm folding traces forward once with torch.fx proxies for rows;
        # that is no call (and fails at the control flow below, so this model runs unfolded).
        if self.calls_file is not None and "Proxy" not in line:
            with self.calls_file.open("a") as log:
                log.write(line + "\n")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]
        if self.oom_above and rows > self.oom_above:
            self._note(f"oom {rows}")
            raise torch.OutOfMemoryError(f"injected: {rows} rows > {self.oom_above}")
        self._note(f"call {rows}")
        if self.sleep and rows > self.slow_above:
            time.sleep(self.sleep)
        return super().forward(x)
