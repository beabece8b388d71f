"""A time budget on the engine's model calls: explanations stop at a chunk boundary in time.

TorchServe 0.12 cannot cancel work in a worker. When a batch outlives the model's
`responseTimeout` it kills the worker (every request of the batch fails, the restart takes
seconds), and when a gRPC client gives up it still runs the request and throws the answer away.
The data plane therefore calls the model through `Budgeted`: a model call that would end after
`until` (judged by the time between the last two calls, i.e. one forward + backward chunk) is
not started and raises `DeadlineExceeded` instead, so the batch is answered (504 for the
explanations cut short) before TorchServe's timeout, and no chunk is spent on answers nobody
waits for. One chunk longer than the whole budget cannot be stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from ..protocol.errors import DeadlineExceeded

__all__ = ["RESPONSE_TIMEOUT_SHARE", "Budgeted"]

# Share of TorchServe's responseTimeout a batch's explanations may use; the rest is headroom
# for encoding the answers and the trip back to the frontend.
RESPONSE_TIMEOUT_SHARE = 0.8


class Budgeted(nn.Module):
    """`model` (its modules visible: guided backprop sees TorchScript through it) with a deadline
    on `time.monotonic()`; `until = None` means no deadline."""

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.inner = model
        self.training = False  # a wrapper only; the model's own mode is left as it is
        self.until: float | None = None
        self.reason = self.field = ""
        self._last_call: float | None = None  # when the previous call of this budget started

    def start(self, until: float | None, reason: str, field: str = "") -> None:
        """A new budget (a new batch): forget the previous chunk's duration. `field` is the
        request field that set `until` (deadline_unix_ms), "" for the server's own limit."""
        self.until, self.reason, self.field, self._last_call = until, reason, field, None

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        now = time.monotonic()
        if self.until is not None:
            chunk = now - self._last_call if self._last_call is not None else 0.0
            if now + chunk >= self.until:
                raise DeadlineExceeded(self.reason, field=self.field)
        self._last_call = now
        scores: torch.Tensor = self.inner(rows)
        return scores
