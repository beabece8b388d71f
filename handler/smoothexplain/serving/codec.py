"""Bytes ⇄ messages ⇄ tensors: request decoding, image preprocessing, attribution encodings.

Every decoding error is an `InvalidArgument` (or `UnsupportedMediaType`) naming the request field.
"""

from __future__ import annotations

import functools
import json
import math
import re
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import DecodeError

from .._proto.smoothexplain.v1 import explain_pb2 as pb
from ..engine.spec import FLOAT32_MAX
from ..protocol.errors import InvalidArgument, LimitExceeded, UnsupportedMediaType
from ..protocol.images import ACCEPTED, image_format, load_image
from ..protocol.tensors import DTYPES, GRPC_KEY, array_to_message, message_to_array
from .config import Limits, Preprocess

__all__ = [
    "GRPC_KEY",
    "decode_request",
    "encode_response",
    "image_to_tensor",
    "message_to_tensor",
    "tensor_from_message",
    "tensor_to_message",
]


_DETAIL_MAX = 300  # characters of a parser's message quoted in an error
_SHOWN_MAX = 60  # characters of a key or value quoted in an error (and in its field path)


def _as_bytes(payload: object, field: str) -> bytes:
    if isinstance(payload, bytes | bytearray | memoryview):
        return bytes(payload)
    if isinstance(payload, str):  # TorchServe decoded a text/* body, or parsed a JSON string
        try:
            return payload.encode()
        except UnicodeEncodeError as error:
            raise _surrogate(field, error) from None
    raise UnsupportedMediaType(f"{field}: cannot read a {type(payload).__name__} body", field=field)


def decode_request(
    payload: object, *, from_grpc: bool, explain_path: bool, limits: Limits
) -> pb.Request:
    """One TorchServe input (gRPC bytes, JSON body, parsed JSON, or raw image) → Request."""
    if payload is None:
        field = GRPC_KEY if from_grpc else "body"
        raise InvalidArgument(f"{field} is missing: send a Request message", field=field)
    if isinstance(payload, Mapping):  # TorchServe already parsed a JSON body
        _check_size(_json_size(payload), limits)  # the same limit as an unparsed body
        request = _from_json(payload)
    else:
        data = _as_bytes(payload, "body")
        _check_size(len(data), limits)
        if from_grpc:  # an empty message is an empty Request: its fields are checked later
            request = _from_proto(data)
        elif not data:
            raise InvalidArgument("body is empty: send an image or a Request", field="body")
        elif image_format(data) is not None:
            request = pb.Request(input=pb.Input(image=data))
        elif (text := data.removeprefix(_UTF8_BOM)).lstrip()[:1] == b"{":  # RFC 8259: a
            request = _from_json(_load_json(_utf8(text)))  # parser may ignore a BOM
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


def _json_size(parsed: Mapping[Any, Any]) -> int:
    """Bytes of `parsed` as compact UTF-8 JSON: what the body held, less its whitespace (the
    raw size of a body TorchServe parsed is not passed on; its max_request_size bounds it)."""
    try:
        text = json.dumps(parsed, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):  # not what json.loads makes
        raise InvalidArgument("body: not a JSON object", field="body") from None
    return len(text.encode("utf-8", "surrogatepass"))


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads keeps the last of duplicated keys; a Request spelling a field twice is
    ambiguous, so it is refused (json_format's own parser does the same)."""
    result = dict(pairs)
    if len(result) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return result


def _load_json(text: str) -> object:
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except _DuplicateKey as duplicate:
        raise InvalidArgument(
            f"body: the key {_shown(duplicate.key)} appears twice in one JSON object",
            field="body",
        ) from None
    except (ValueError, RecursionError) as error:
        raise InvalidArgument(f"body: not valid JSON: {_one_line(error)}", field="body") from None


def _from_json(value: object) -> pb.Request:
    """A parsed JSON body → Request. Our schema walk checks every key and value first, so
    json_format (and the upb maps under it, which raise SystemError on a lone surrogate)
    only ever sees known field names and values of the right JSON type."""
    if not isinstance(value, Mapping):
        raise UnsupportedMediaType("body must be a JSON object (a Request)", field="body")
    _check_message(value, pb.Request.DESCRIPTOR, "")
    try:
        return json_format.ParseDict(dict(value), pb.Request())
    except Exception as error:  # as json_format.Parse does: a fault of the document's
        # One line, bounded: json_format may quote a whole (huge) value.
        field = _json_field(str(error))
        raise InvalidArgument(
            f"body: invalid Request JSON: {_one_line(error)}", field=field
        ) from None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:_DETAIL_MAX]


def _escaped(text: str) -> str:
    """`text` for an error message: one line, lone surrogates and other unprintable
    characters escaped, at most _SHOWN_MAX characters."""
    head = "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode()
        for c in text[: _SHOWN_MAX + 1]
    )
    return head[:_SHOWN_MAX] + "..." if len(head) > _SHOWN_MAX else head


def _shown(key: str) -> str:
    """A JSON key as it appears in a field path (an empty one as "")."""
    return _escaped(key) or '""'


def _described(value: object) -> str:
    if isinstance(value, str):
        return f'"{_escaped(value)}"'
    if isinstance(value, bool | float) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        bits = value.bit_length()
        return str(value) if bits <= 64 else f"an integer of {bits} bits"
    return f"a JSON {'array' if isinstance(value, list) else 'object'}"


def _surrogate(field: str, error: UnicodeEncodeError) -> InvalidArgument:
    return InvalidArgument(
        f"{field} holds a lone UTF-16 surrogate at character {error.start}; JSON text must "
        "encode whole Unicode characters",
        field=field,
    )


# proto3 JSON: integers as numbers or strings. A string must be decimal digits ("7.0", "1e3",
# " 7" or "٧" are refused; json_format would take them). A number with a fraction or an
# exponent (7.0, 1e3) is accepted as json_format and the proto3 spec do, but only while a
# double holds it exactly: 9007199254740993.0 would silently become ...992.
_UTF8_BOM = b"\xef\xbb\xbf"
_INTEGER_TEXT = re.compile(r"-?[0-9]{1,20}")
_EXACT_FLOAT_INTEGER = 2**53
# Doubles as strings: a JSON number in quotes, or NaN/Infinity/-Infinity (no " 1", "1_0").
_NUMBER_TEXT = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|NaN|-?Infinity")
_INTEGER_TYPES = frozenset(
    (
        FieldDescriptor.CPPTYPE_INT32,
        FieldDescriptor.CPPTYPE_INT64,
        FieldDescriptor.CPPTYPE_UINT32,
        FieldDescriptor.CPPTYPE_UINT64,
    )
)
_REAL_TYPES = frozenset((FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT))


@functools.cache
def _fields_by_key(descriptor: Descriptor) -> dict[str, FieldDescriptor]:
    """Proto and JSON (camelCase) names → field, as a plain dict (upb's maps are no dicts)."""
    by_name = {f.name: f for f in descriptor.fields}
    return {**{f.json_name: f for f in descriptor.fields}, **by_name}


@functools.cache
def _enum_names(enum: EnumDescriptor) -> frozenset[str]:
    return frozenset(v.name for v in enum.values)


def _check_message(value: Mapping[Any, Any], descriptor: Descriptor, prefix: str) -> None:
    """Every key a field of `descriptor`, every value of its field's JSON type, recursively;
    the first offence is refused naming its path. Ranges are left to json_format."""
    fields = _fields_by_key(descriptor)
    spelled: dict[str, str] = {}  # field name -> the key that set it
    for key, item in value.items():
        field = fields.get(key) if isinstance(key, str) else None
        if field is None:
            path = prefix + _shown(key if isinstance(key, str) else repr(key))
            names = sorted(f.name for f in descriptor.fields)
            raise InvalidArgument(
                f"{path} is not a field of {descriptor.name} (fields: {', '.join(names)})",
                field=path,
            )
        if field.name in spelled:  # nt_samples and ntSamples: which one is meant is unclear
            raise InvalidArgument(
                f"{prefix}{field.name} is given twice "
                f"(as {_shown(spelled[field.name])} and {_shown(key)})",
                field=prefix + field.name,
            )
        spelled[field.name] = key
        if item is None:  # proto3 JSON: null is the field's default
            continue
        path = prefix + field.name
        if not field.is_repeated:
            _check_value(field, item, path)
        elif isinstance(item, list):
            for element in item:
                _check_value(field, element, path)
        else:
            raise InvalidArgument(f"{path} must be a JSON array", field=path)


def _check_value(field: FieldDescriptor, item: object, path: str) -> None:
    kind = field.cpp_type
    if field.message_type is not None:
        if not isinstance(item, dict):
            raise InvalidArgument(
                f"{path} must be a JSON object, got {_described(item)}", field=path
            )
        _check_message(item, field.message_type, path + ".")
    elif field.enum_type is not None:
        _check_enum(field.enum_type, item, path)
    elif kind in _INTEGER_TYPES:
        if _json_integer(item) is None:  # its range is json_format's to check
            raise InvalidArgument(
                f"{path} must be an integer (a JSON number or a string of decimal digits), "
                f"got {_described(item)}",
                field=path,
            )
    elif kind in _REAL_TYPES:
        if not _is_real(item):
            raise InvalidArgument(
                f'{path} must be a number (or "NaN", "Infinity", "-Infinity"), '
                f"got {_described(item)}",
                field=path,
            )
    elif kind == FieldDescriptor.CPPTYPE_BOOL:
        if not isinstance(item, bool):
            raise InvalidArgument(
                f"{path} must be true or false, got {_described(item)}", field=path
            )
    else:
        _check_text(field, item, path)


def _check_enum(enum: EnumDescriptor, item: object, path: str) -> None:
    names = _enum_names(enum)
    if isinstance(item, str) and item in names:
        return
    number = _json_integer(item)
    if number is not None and -(2**31) <= number < 2**31:
        return  # a number the enum lacks is refused with the field by the service
    shown = sorted(n for n in names if not n.endswith("_UNSPECIFIED"))
    raise InvalidArgument(
        f"{path} must be one of {shown} or its number (an int32), got {_described(item)}",
        field=path,
    )


def _check_text(field: FieldDescriptor, item: object, path: str) -> None:
    if not isinstance(item, str):
        kind = "base64 string" if field.type == FieldDescriptor.TYPE_BYTES else "string"
        raise InvalidArgument(f"{path} must be a {kind}, got {_described(item)}", field=path)
    try:
        item.encode()
    except UnicodeEncodeError as error:
        raise _surrogate(path, error) from None


def _json_integer(item: object) -> int | None:
    """The integer a JSON value stands for, None if it is none (see _INTEGER_TEXT)."""
    if isinstance(item, bool):  # a bool is an int to Python, not to JSON
        return None
    if isinstance(item, int):
        return item
    if isinstance(item, float):
        return int(item) if item.is_integer() and abs(item) < _EXACT_FLOAT_INTEGER else None
    if isinstance(item, str) and _INTEGER_TEXT.fullmatch(item):
        return int(item)
    return None


def _is_real(item: object) -> bool:
    if isinstance(item, bool):
        return False
    if isinstance(item, int):
        return abs(item) <= sys.float_info.max
    if isinstance(item, float):  # bare NaN/Infinity tokens: Python's json takes them, JSON not
        return math.isfinite(item)
    return isinstance(item, str) and _NUMBER_TEXT.fullmatch(item) is not None


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
        max_aspect_ratio=limits.max_aspect_ratio,
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
    if message.dtype not in DTYPES:
        raise InvalidArgument(
            f"{field}.dtype must be one of {[pb.DType.Name(d) for d in DTYPES]}",
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
    np_dtype = DTYPES[message.dtype]
    if len(message.data) != count * np_dtype.itemsize:
        raise InvalidArgument(
            f"{field}.data holds {len(message.data)} bytes; shape {shape} of "
            f"{pb.DType.Name(message.dtype)} needs {count * np_dtype.itemsize}",
            field=f"{field}.data",
        )
    array = np.frombuffer(message.data, dtype=np_dtype).reshape(shape)
    _check_float32_range(array, f"{field}.data")
    return torch.from_numpy(array.astype(np.float32))


def _check_float32_range(array: np.ndarray[Any, Any], field: str) -> None:
    """Refuse NaN, inf, and float64 values beyond float32's range (the cast would make them
    inf). Float64 values below float32's smallest become subnormals or 0, as a cast rounds."""
    if array.dtype.kind != "f":
        return
    finite = bool(np.isfinite(array).all())
    if finite and array.dtype.itemsize > 4:
        finite = float(np.abs(array).max()) <= FLOAT32_MAX
    if not finite:
        raise InvalidArgument(
            f"{field} contains NaN, Inf or values beyond float32 (|x| > {FLOAT32_MAX!r})",
            field=field,
        )


def tensor_to_message(
    tensor: torch.Tensor, dtype: pb.DType.ValueType = pb.DTYPE_FLOAT32
) -> pb.Tensor:
    values = tensor.detach().cpu()
    if values.dtype == torch.bfloat16:  # numpy has no bfloat16
        values = values.float()
    return array_to_message(values.numpy(), dtype)


def message_to_tensor(message: pb.Tensor) -> torch.Tensor:
    """Inverse of `tensor_to_message`, always float32."""
    return torch.from_numpy(message_to_array(message))


def encode_response(response: pb.Response, *, as_json: bool) -> bytes | str:
    if as_json:
        return json_format.MessageToJson(response, preserving_proto_field_name=True, indent=None)
    return response.SerializeToString()
