"""`Tensor` messages ⇄ numpy arrays: the wire codec of tensors, free of torch (the client's).

The serving codec wraps it for torch tensors (serving/codec.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._proto.smoothexplain.v1 import explain_pb2 as pb
from .errors import InvalidArgument

__all__ = ["DTYPES", "GRPC_KEY", "array_to_message", "message_to_array"]

GRPC_KEY = "smoothexplain.v1.Request"  # our key in TorchServe's gRPC input map

# Wire dtype → its little-endian numpy dtype.
DTYPES: dict[pb.DType.ValueType, np.dtype[Any]] = {
    pb.DTYPE_FLOAT32: np.dtype("<f4"),
    pb.DTYPE_FLOAT16: np.dtype("<f2"),
    pb.DTYPE_FLOAT64: np.dtype("<f8"),
    pb.DTYPE_UINT8: np.dtype("u1"),
}


def array_to_message(array: Any, dtype: pb.DType.ValueType = pb.DTYPE_FLOAT32) -> pb.Tensor:
    """A numpy array (or anything `np.asarray` takes) as a `Tensor` of `dtype`."""
    values = np.asarray(array).astype(DTYPES[dtype], copy=False)
    return pb.Tensor(shape=list(values.shape), dtype=dtype, data=values.tobytes())


def message_to_array(message: pb.Tensor, field: str = "attribution") -> np.ndarray[Any, Any]:
    """A `Tensor` as a float32 numpy array of its shape; `InvalidArgument` naming `field` when
    its dtype is unknown or its bytes do not fill its shape."""
    if message.dtype not in DTYPES:
        raise InvalidArgument(f"{field} has an unknown dtype {message.dtype}", field=field)
    dtype = DTYPES[message.dtype]
    shape = tuple(message.shape)
    if len(message.data) != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
        raise InvalidArgument(
            f"{field} holds {len(message.data)} bytes, not a {dtype.name} tensor of shape {shape}",
            field=field,
        )
    return np.frombuffer(message.data, dtype=dtype).reshape(shape).astype(np.float32)
