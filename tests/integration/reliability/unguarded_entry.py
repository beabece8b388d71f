"""Test-only TorchServe entry: our handler as it was before issue 18, answering StreamPredictions2
messages like any gRPC request. It reproduces the lost worker that ts_handler.py now prevents,
so that /readyz and the serve supervisor's restart can be tested (test_streams.py).

TorchServe imports this file from the unpacked archive: one class, absolute imports only.
"""

from collections.abc import Sequence
from typing import Any

from smoothexplain.serving.ts_handler import SmoothExplainHandler


class UnguardedHandler(SmoothExplainHandler):
    """Answers every row, StreamPredictions2 messages included."""

    @staticmethod
    def _stream2_rows(context: Any, explain: Sequence[object]) -> list[int]:
        return []
