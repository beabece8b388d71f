"""The answer encoder: an explanation into its Response, a Response or an error onto the wire."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from .._proto.smoothexplain.v1 import explain_pb2 as pb
from ..engine import ExplainJob, JobResult
from ..engine.spec import ExplainSpec, Method
from ..protocol.errors import (
    InvalidArgument,
    LimitExceeded,
    ModelOutputError,
    SmoothExplainError,
    status_of,
)
from ..protocol.heatmap import heatmap_png
from ..protocol.options import enum_from_proto, enum_to_proto, from_proto, option, to_proto
from .codec import encode_response, tensor_to_message

__all__ = ["Outgoing", "applied", "explanation", "failed", "not_finite", "too_big"]


@dataclass(frozen=True)
class Outgoing:
    status: int  # HTTP status of this request's answer
    body: bytes | str  # serialized Response (gRPC) or its JSON mapping (REST)
    message: str = ""  # error text for TorchServe's status line; "" when OK


def explanation(
    response: pb.Response,
    request: pb.Request,
    job: ExplainJob,
    result: JobResult,
    default_encoding: str,
) -> None:
    """Write `job`'s `result` into `response`: the map in the asked encoding, the options
    applied, the seed and the rows spent."""
    asked = enum_from_proto("encoding", request.options.encoding)
    encoding_name = asked or default_encoding
    encoding = enum_to_proto("encoding", encoding_name)
    started = time.perf_counter()
    if not bool(torch.isfinite(result.attribution).all()):
        raise not_finite(request, "attribution")
    if encoding in (pb.ENCODING_FLOAT32, pb.ENCODING_FLOAT32_AND_PNG):
        response.attribution.CopyFrom(tensor_to_message(result.attribution, pb.DTYPE_FLOAT32))
    elif encoding == pb.ENCODING_FLOAT16:
        response.attribution.CopyFrom(tensor_to_message(result.attribution, pb.DTYPE_FLOAT16))
    if encoding in (pb.ENCODING_PNG, pb.ENCODING_FLOAT32_AND_PNG):
        response.heatmap_png = heatmap_png(result.attribution)
    if result.convergence_delta is not None:
        if not math.isfinite(result.convergence_delta):  # F(baseline) overflowed
            raise not_finite(request, "convergence delta")
        response.convergence_delta = result.convergence_delta
    response.options.CopyFrom(applied(job.spec, job.seed, request.options, encoding_name))
    if result.relative_error is not None and math.isfinite(result.relative_error):
        response.relative_error = result.relative_error
    response.seed = job.seed
    response.nt_samples = result.samples or job.spec.samples
    response.rows = result.rows
    response.timings.encode_ms = 1000 * (time.perf_counter() - started)


def applied(
    spec: ExplainSpec, seed: int, asked: pb.ExplainOptions, encoding: str
) -> pb.ExplainOptions:
    """The request's options with every default filled in, as the engine ran them (the IG
    options for IG only, the CAM options for CAMs only)."""
    values = {**spec.echo(), "seed": seed, "encoding": encoding}
    values["baseline"] = from_proto(asked)["baseline"]
    if spec.method is not Method.INTEGRATED_GRADIENTS:
        values = {name: v for name, v in values.items() if not option(name).ig_only}
    if not spec.cam:
        values = {name: v for name, v in values.items() if not option(name).cam_only}
    return to_proto(values)


def not_finite(request: pb.Request, what: str) -> SmoothExplainError:
    """The model's scores or the map came out NaN or infinite: the tensor's values overflow
    the model (the client's to change), or the model broke on a decoded image (ours)."""
    options = request.options
    if what != "scores" and options.HasField("baseline"):  # checked first: the map uses both
        return InvalidArgument(
            f"options.baseline {options.baseline:g} makes the model's {what} NaN or infinite: "
            "the model's output along the path overflows; choose a baseline in the model's "
            "input range",
            field="options.baseline",
        )
    if request.input.WhichOneof("source") == "tensor":
        return InvalidArgument(
            f"input.tensor.data makes the model's {what} NaN or infinite: its values overflow "
            "the model; send values in the model's input range",
            field="input.tensor.data",
        )
    return ModelOutputError(f"the model's {what} for this image are not finite (NaN or infinite)")


def too_big(body: bytes | str, limit: int) -> LimitExceeded | None:
    """The refusal of an encoded answer above max_response_bytes, else None."""
    size = len(body.encode() if isinstance(body, str) else body)
    if size <= limit:
        return None
    return LimitExceeded(
        f"the answer would be {size} bytes, above the server limit max_response_bytes="
        f"{limit}; ask for ENCODING_FLOAT16 or ENCODING_PNG",
        field="options.encoding",
    )


def failed(
    error: SmoothExplainError, timings: pb.Timings, model_name: str, as_json: bool
) -> Outgoing:
    """The error answer: its status, the Response that carries the error, its message."""
    status = status_of(error)
    response = pb.Response(model=model_name, timings=timings)
    response.error.http_status, response.error.grpc_code = status.http, status.grpc
    # Lone surrogates (from a request) would make the answer itself fail to serialize.
    response.error.message = _utf8(error.message)
    response.error.field = _utf8(error.field)
    return Outgoing(status.http, encode_response(response, as_json=as_json), error.message)


def _utf8(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
