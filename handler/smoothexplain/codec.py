"""Bytes ⇄ messages ⇄ tensors: request decoding, image preprocessing, attribution encodings.

Every decoding error is an `InvalidArgument` (or `UnsupportedMediaType`) naming the request field.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from PIL import Image

from ._proto.smoothexplain.v1 import explain_pb2 as pb
from .config import Limits, Preprocess
from .errors import InvalidArgument, LimitExceeded, UnsupportedMediaType

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
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")


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
    if isinstance(payload, Mapping):  # TorchServe already parsed a JSON body
        request = _from_json(json.dumps(payload))
    else:
        data = _as_bytes(payload, "body")
        if len(data) > limits.max_input_bytes:
            raise LimitExceeded(
                f"body is {len(data)} bytes, above the server limit "
                f"max_input_bytes={limits.max_input_bytes}",
                field="body",
            )
        if not data:
            raise InvalidArgument("body is empty: send an image or a Request message", field="body")
        if from_grpc:
            request = _from_proto(data)
        elif data.startswith(_IMAGE_MAGIC):
            request = pb.Request(input=pb.Input(image=data))
        elif data.lstrip()[:1] == b"{":
            request = _from_json(data.decode("utf-8", errors="replace"))
        else:
            raise UnsupportedMediaType(
                "body must be a PNG or JPEG image or a JSON Request (see proto/)", field="body"
            )
    if explain_path:
        request.explain = True
    return request


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
        raise InvalidArgument(
            f"body: invalid Request JSON: {error}", field=_json_field(str(error))
        ) from None


def _json_field(message: str) -> str:
    # json_format names the failing field as "...Request.options.nt_samples..." or similar.
    for token in message.replace('"', " ").split():
        if token.startswith("smoothexplain.v1."):
            return token.split(".", 2)[-1].rstrip(":,.")
    return "body"


def image_to_tensor(data: bytes, pre: Preprocess, limits: Limits) -> torch.Tensor:
    """Decode PNG/JPEG, resize the shorter side, centre-crop, normalise → (C, size, size)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > limits.max_pixels:
                raise LimitExceeded(
                    f"input.image is {width}×{height} pixels, above the server "
                    f"limit max_pixels={limits.max_pixels}",
                    field="input.image",
                )
            if image.format not in ("PNG", "JPEG"):
                raise UnsupportedMediaType("input.image must be PNG or JPEG", field="input.image")
            rgb = image.convert("RGB" if pre.channels == 3 else "L")
    except (
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as error:
        if isinstance(error, InvalidArgument):
            raise
        raise InvalidArgument(
            f"input.image cannot be decoded: {error}", field="input.image"
        ) from None
    scale = pre.resize / min(rgb.size)
    size = (max(pre.size, round(rgb.width * scale)), max(pre.size, round(rgb.height * scale)))
    resized = rgb.resize(size, Image.Resampling.BILINEAR)
    left, top = (resized.width - pre.size) // 2, (resized.height - pre.size) // 2
    crop = resized.crop((left, top, left + pre.size, top + pre.size))
    pixels = torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255.0)
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
            f"{field} has {count} elements, above the server limit "
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
        raise InvalidArgument(f"{field} contains NaN or Inf", field=f"{field}.data")
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
