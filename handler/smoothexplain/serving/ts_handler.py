"""TorchServe adapter: turns a TorchServe batch into `Incoming`s and back. Nothing else lives here.

TorchServe 0.12 facts this adapter works around (see DESIGN.md §3):
- `explain` is read per request from its own header (BaseHandler reads request 0's only);
- a gRPC request's bytes arrive under our map key `GRPC_KEY`, a REST body under `body`/`data`;
- per-request REST errors go through `set_response_status(code, msg, idx)`; gRPC ignores that
  status, so the error also travels inside our Response message;
- REST rows carry the caller's `Authorization` header: nothing here logs headers or bodies;
- a StreamPredictions2 message is never answered (`stream2_rows`): TorchServe's frontend ends
  that call as soon as the client half-closes, and answering an ended call throws in the
  frontend's worker thread, which loses the worker for good (docs/reliability.md).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..protocol.errors import LOAD_REFUSED_MARK, SmoothExplainError
from .allocator import keep_freed_memory
from .codec import GRPC_KEY
from .config import parse_config
from .metrics import ServiceMetrics
from .models import load_labels, load_served
from .service import ExplainService, Incoming, Outgoing

__all__ = [
    "SEQUENCE_ID_HEADER",
    "SmoothExplainHandler",
    "incoming_from",
    "reason_phrase",
    "stream2_rows",
]

log = logging.getLogger(__name__)
REST_KEYS = ("body", "data")
REASON_MAX = 200  # characters of an error message put into the HTTP status line
#: The request header TorchServe 0.12 puts on StreamPredictions2 messages only (its name is
#: pinned by `ts_header_key_sequence_id` in ops/config.properties and the launcher).
SEQUENCE_ID_HEADER = "ts_request_sequence_id"


def incoming_from(row: Mapping[str, Any], explain_header: object) -> Incoming:
    """One TorchServe request row → Incoming.

    TorchServe gives every REST request a string `explain` header and gRPC requests none, so
    the header, not the input keys, tells the transports apart: a REST form field named like
    our gRPC key must not get a gRPC answer (its HTTP reply would never be sent), and a gRPC
    input named "explain" (reported as that input's header dict) must not crash the batch.
    """
    if not isinstance(explain_header, str):
        return Incoming(row.get(GRPC_KEY), from_grpc=True)  # a missing key: 400 naming it
    explain_path = explain_header.lower() == "true"
    for key in REST_KEYS:
        if key in row:
            return Incoming(row[key], explain_path=explain_path)
    return Incoming(None, explain_path=explain_path)


def stream2_rows(
    explain_headers: Sequence[object], sequence_headers: Sequence[object]
) -> list[int]:
    """Indices of the batch's StreamPredictions2 messages.

    The frontend sets the sequence id as a request-level header (a str); a gRPC input named
    like it appears as a dict, and a REST request (string `explain` header) is always answered,
    whatever HTTP headers it brought, or its connection would wait forever.
    """
    return [
        index
        for index, (explain, sequence) in enumerate(
            zip(explain_headers, sequence_headers, strict=True)
        )
        if not isinstance(explain, str) and isinstance(sequence, str)
    ]


def _withhold_replies(context: Any, rows: Sequence[int]) -> None:
    """Leaves `rows` out of the reply TorchServe's worker sends: it writes one entry per key of
    `context.request_ids`, and the frontend drops a batch's jobs that got none."""
    request_ids = context.request_ids
    if not isinstance(request_ids, MutableMapping):
        raise TypeError("TorchServe's context.request_ids is no longer a dict; see ts_handler.py")
    for index in rows:
        del request_ids[index]
    log.warning(
        "%d StreamPredictions2 message(s) left unanswered: this model serves Predictions and "
        "StreamPredictions only",
        len(rows),
    )


def _response_timeout(context: Any) -> float | None:
    """The model's responseTimeout (model-config.yaml), after which TorchServe kills the
    worker: the data plane stops explaining before it. None when the archive sets none."""
    value = (getattr(context, "model_yaml_config", None) or {}).get("responseTimeout")
    return float(value) if isinstance(value, int | float) and value > 0 else None


def _device(properties: Mapping[str, Any]) -> torch.device:
    gpu_id = properties.get("gpu_id")
    if gpu_id is not None and torch.cuda.is_available():
        return torch.device("cuda", int(gpu_id))
    return torch.device("cpu")


class SmoothExplainHandler:
    """TorchServe custom handler (class style: `initialize` once, `handle` per batch)."""

    def __init__(self) -> None:
        self.service: ExplainService | None = None

    def initialize(self, context: Any) -> None:
        name = str(context.manifest.get("model", {}).get("modelName", ""))
        try:
            self._initialize(context, name)
        except SmoothExplainError as error:  # the same on every restart: say so once, clearly
            message = " ".join(str(error).split())
            log.error("%s %s: %s", LOAD_REFUSED_MARK, name or "(unnamed)", message)
            raise

    def _initialize(self, context: Any, name: str) -> None:
        properties: Mapping[str, Any] = context.system_properties
        model_dir = Path(properties["model_dir"])
        raw = (getattr(context, "model_yaml_config", None) or {}).get("smoothexplain")
        config = parse_config(raw)
        kept = config.keep_freed_memory and keep_freed_memory()
        device = _device(properties)
        served = load_served(model_dir, config, device, note=log.info)
        labels = load_labels(model_dir, config)
        metrics = ServiceMetrics(name, device)  # files under $PROMETHEUS_MULTIPROC_DIR when set
        timeout = _response_timeout(context)
        self.service = ExplainService(
            served.model, config, labels, device, name, metrics, timeout, served.layers
        )
        self.service.probe_cost()  # admission by cost judges the first requests too
        _ = self.service.default_layer  # CAMs: found now (and logged), not in a request
        log.info(
            "smoothexplain model %s ready on %s (torch threads %d, inter-op %d, %s)",
            name,
            device,
            torch.get_num_threads(),
            torch.get_num_interop_threads(),
            "freed memory kept for reuse" if kept else "default malloc settings",
        )

    def handle(self, data: Sequence[Mapping[str, Any]], context: Any) -> list[bytes | str]:
        if self.service is None:
            raise RuntimeError("handle() called before initialize()")
        explain = [context.get_request_header(i, "explain") for i in range(len(data))]
        unanswered = self._stream2_rows(context, explain)
        served = [i for i in range(len(data)) if i not in unanswered]
        batch = [incoming_from(data[i], explain[i]) for i in served]
        answers = self.service.handle(batch) if batch else []
        bodies: list[bytes | str] = [b""] * len(data)  # the unanswered rows' are never sent
        for index, incoming, answer in zip(served, batch, answers, strict=True):
            self._set_status(context, index, incoming, answer)
            bodies[index] = answer.body
        if unanswered:
            _withhold_replies(context, unanswered)
        return bodies

    @staticmethod
    def _stream2_rows(context: Any, explain: Sequence[object]) -> list[int]:
        sequence = [context.get_request_header(i, SEQUENCE_ID_HEADER) for i in range(len(explain))]
        return stream2_rows(explain, sequence)

    @staticmethod
    def _set_status(context: Any, index: int, incoming: Incoming, answer: Outgoing) -> None:
        if incoming.from_grpc:
            context.set_response_content_type(index, "application/x-protobuf")
            # Without this header a StreamPredictions call makes TorchServe 0.12's frontend
            # throw and restart the worker; "false" ends the stream after our one answer.
            # (On REST the same header would leave the HTTP request unanswered.)
            context.set_response_header(index, "ts_stream_next", "false")
            return
        context.set_response_content_type(index, "application/json")
        if answer.status != 200:
            context.set_response_status(answer.status, reason_phrase(answer.message), idx=index)


def reason_phrase(message: str) -> str:
    """`message` made safe for the HTTP status line TorchServe builds from it.

    A CR or LF there makes TorchServe 0.12's Netty throw and restart the worker, failing the
    whole batch (measured; see docs/reliability.md): keep one short printable-ASCII line.
    The full message stays in the JSON body.
    """
    line = "".join(c if " " <= c <= "~" else " " for c in message).strip()
    return line[:REASON_MAX] or "error"
