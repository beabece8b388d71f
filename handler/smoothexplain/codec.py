"""Bytes ⇄ messages ⇄ tensors: request decoding, image preprocessing, attribution encodings.

Every decoding error is an `InvalidArgument` (or `UnsupportedMediaType`) naming the request field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from ._proto.smoothexplain.v1 import explain_pb2 as pb
from .config import Limits, Preprocess
from .errors import InvalidArgument, LimitExceeded, UnsupportedMediaType
from .images import ACCEPTED, image_format, load_image

__all__ = [
    "GRPC_KEY",
    "decode_request",
    "encode_response",
    "image_to_tensor",
    "message_to_tensor",
    "tensor_from_message",
    "tensor_to_message",
]

GRPC_KEY = "smoothexplain.v1.Request"  # our key in TorchServe's gRPC input map

_DTYPES: dict[pb.DType.ValueType, tuple[np.dtype[Any], torch.dtype]] = {
    pb.DTYPE_FLOAT32: (np.dtype("<f4"), torch.float32),
    pb.DTYPE_FLOAT16: (np.dtype("<f2"), torch.float16),
    pb.DTYPE_FLOAT64: (np.dtype("<f8"), torch.float64),
    pb.DTYPE_UINT8: (np.dtype("u1"), torch.uint8),
}
_DETAIL_MAX = 300  # characters of a parser's message quoted in an error


def _as_bytes(payload: object, field: str) -> bytes:
    if isinstance(payload, bytes | bytearray | memoryview):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode()
    raise UnsupportedMediaType(f"{field}: cannot read a {type(payload).__name__} body", field=field)


def decode_request(
    payload: object, *, from_grpc: bool, explain_path: bool, limits: Limits
) -> pb.Request:
    """One TorchServe input (gRPC bytes, JSON body, parsed JSON, or raw image) → Request."""
    if payload is None:
        field = GRPC_KEY if from_grpc else "body"
        raise InvalidArgument(f"{field} is missing: send a Request message", field=field)
    if isinstance(payload, Mapping):  # TorchServe already parsed a JSON body
        text = json.dumps(payload)
        _check_size(len(text), limits)  # the same limit as an unparsed body
        request = _from_json(text)
    else:
        data = _as_bytes(payload, "body")
        _check_size(len(data), limits)
        if from_grpc:  # an empty message is an empty Request: its fields are checked later
            request = _from_proto(data)
        elif not data:
            raise InvalidArgument("body is empty: send an image or a Request", field="body")
        elif image_format(data) is not None:
            request = pb.Request(input=pb.Input(image=data))
        elif data.lstrip()[:1] == b"{":
            request = _from_json(_utf8(data))
        else:
            raise UnsupportedMediaType(
                f"body must be a {ACCEPTED} image or a JSON Request (see proto/)", field="body"
            )
    if explain_path:
        request.explain = True
    return request


def _check_size(size: int, limits: Limits) -> None:
    if size > limits.max_input_bytes:
        raise LimitExceeded(
            f"body is {size} bytes, above the server limit "
            f"max_input_bytes={limits.max_input_bytes}",
            field="body",
        )


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidArgument(
            f"body: a JSON Request must be UTF-8 (invalid byte at {error.start})", field="body"
        ) from None


def _from_proto(data: bytes) -> pb.Request:
    request = pb.Request()
    try:
        request.ParseFromString(data)
    except DecodeError as error:
        raise InvalidArgument(
            f"{GRPC_KEY}: not a valid Request message ({error})", field=GRPC_KEY
        ) from None
    return request


def _from_json(text: str) -> pb.Request:
    try:
        return json_format.Parse(text, pb.Request())
    except json_format.ParseError as error:
        # One line, bounded: json_format may quote a whole (huge) value or list the fields
        # on a second line.
        detail = " ".join(str(error).split())[:_DETAIL_MAX]
        field = _mistyped(text, pb.Request.DESCRIPTOR) or _json_field(str(error))
        raise InvalidArgument(f"body: invalid Request JSON: {detail}", field=field) from None


def _mistyped(text: str | dict[str, Any], descriptor: Any, prefix: str = "") -> str:
    """The first message-typed field whose JSON value is not an object ("" if none): there
    json_format reports the characters of a string as unknown field names."""
    try:
        value = json.loads(text) if isinstance(text, str) else text
    except (ValueError, RecursionError):
        return ""
    if not isinstance(value, dict):
        return ""
    for key, item in value.items():
        field = descriptor.fields_by_name.get(key) or descriptor.fields_by_camelcase_name.get(key)
        if field is None or field.message_type is None or item is None:
            continue
        path = f"{prefix}{field.name}"
        if not isinstance(item, dict):
            return path
        inner = _mistyped(item, field.message_type, f"{path}.")
        if inner:
            return inner
    return ""


def _json_field(message: str) -> str:
    """The request field a json_format error is about, as a path of proto field names.

    protobuf 5-7 say "... at Request.options.method", or chain "Failed to parse options
    field: Failed to parse nt_samples field: ..." (skipping oneof members such as
    input.tensor), or "... has no field named "x" at "Request.options"".
    """
    located = re.search(r"\bat \"?Request((?:\.\w+)+)", message)
    chain = re.findall(r"Failed to parse (\w+) field", message)
    path = _resolve(located.group(1)[1:].split(".") if located else chain)
    if chain and chain[-1] not in path:  # "at" may name the parent of the failing field
        longer = _resolve([*path, chain[-1]])
        path = longer if len(longer) > len(path) else path
    unknown = re.search(r'has no field named "([^"]*)"', message)
    if unknown:  # a name the schema does not have: report it as sent
        path.append(unknown.group(1))
    return ".".join(path) or "body"


def _resolve(names: list[str]) -> list[str]:
    """Field names → a path from Request, inserting a skipped level (json_format's error
    chain omits e.g. "tensor" in input.tensor.shape) and dropping names that are no field."""
    path: list[str] = []
    descriptor: Any = pb.Request.DESCRIPTOR
    for name in names:
        field = descriptor.fields_by_name.get(name)
        if field is None:
            inner = [
                f
                for f in descriptor.fields
                if f.message_type is not None and name in f.message_type.fields_by_name
            ]
            if len(inner) != 1:
                break
            path.append(inner[0].name)
            field = inner[0].message_type.fields_by_name[name]
        path.append(field.name)
        if field.message_type is None:
            break
        descriptor = field.message_type
    return path


def image_to_tensor(data: bytes, pre: Preprocess, limits: Limits) -> torch.Tensor:
    """Decode a PNG, JPEG or WebP image, turn it upright (EXIF orientation), resize and crop
    it as torchvision's Resize(pre.resize) + CenterCrop(pre.size), then ToTensor and Normalize
    → (C, size, size)."""
    image = load_image(
        data,
        mode="RGB" if pre.channels == 3 else "L",
        crop=(pre.resize, pre.size),
        max_pixels=limits.max_pixels,
    )
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
    pixels = pixels.unsqueeze(-1) if pixels.dim() == 2 else pixels
    chw = pixels.permute(2, 0, 1).contiguous()
    mean = torch.tensor(pre.mean).view(-1, 1, 1)
    std = torch.tensor(pre.std).view(-1, 1, 1)
    return (chw - mean) / std


def tensor_from_message(message: pb.Tensor, pre: Preprocess, limits: Limits) -> torch.Tensor:
    """A preprocessed model input (C, H, W) from its raw little-endian bytes."""
    field = "input.tensor"
    if message.dtype not in _DTYPES:
        raise InvalidArgument(
            f"{field}.dtype must be one of {[pb.DType.Name(d) for d in _DTYPES]}",
            field=f"{field}.dtype",
        )
    shape = tuple(message.shape)
    if len(shape) != 3 or shape[0] != pre.channels or min(shape) < 1:
        raise InvalidArgument(
            f"{field}.shape must be ({pre.channels}, H, W) with H, W >= 1, got {shape}",
            field=f"{field}.shape",
        )
    count = shape[0] * shape[1] * shape[2]
    if count > limits.max_tensor_elements:
        raise LimitExceeded(
            f"{field}.shape {shape} has {count} elements, above the server limit "
            f"max_tensor_elements={limits.max_tensor_elements}",
            field=f"{field}.shape",
        )
    np_dtype, _ = _DTYPES[message.dtype]
    if len(message.data) != count * np_dtype.itemsize:
        raise InvalidArgument(
            f"{field}.data holds {len(message.data)} bytes; shape {shape} of "
            f"{pb.DType.Name(message.dtype)} needs {count * np_dtype.itemsize}",
            field=f"{field}.data",
        )
    array = np.frombuffer(message.data, dtype=np_dtype).reshape(shape)
    tensor = torch.from_numpy(array.astype(np.float32))
    if not bool(torch.isfinite(tensor).all()):
        raise InvalidArgument(f"{field}.data contains NaN or Inf", field=f"{field}.data")
    return tensor


def tensor_to_message(
    tensor: torch.Tensor, dtype: pb.DType.ValueType = pb.DTYPE_FLOAT32
) -> pb.Tensor:
    np_dtype, torch_dtype = _DTYPES[dtype]
    array = tensor.detach().to("cpu", torch_dtype).numpy().astype(np_dtype, copy=False)
    return pb.Tensor(shape=list(tensor.shape), dtype=dtype, data=array.tobytes())


def message_to_tensor(message: pb.Tensor) -> torch.Tensor:
    """Inverse of `tensor_to_message` (used by clients), always float32."""
    np_dtype, _ = _DTYPES[message.dtype]
    array = np.frombuffer(message.data, dtype=np_dtype).reshape(tuple(message.shape))
    return torch.from_numpy(array.astype(np.float32))


def encode_response(response: pb.Response, *, as_json: bool) -> bytes | str:
    if as_json:
        return json_format.MessageToJson(response, preserving_proto_field_name=True, indent=None)
    return response.SerializeToString()
