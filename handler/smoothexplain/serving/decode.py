"""Request decoding: one raw payload in, a checked request out.

Three steps, so that the service keeps what each one learned when a later one fails (the
metrics label a request by its kind and method as far as they are known): `parse` reads the
payload, `decode` preprocesses the input and reads top_k and the explanation's spec, `seeded`
refuses a method known not to apply to the model and draws the seed.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace

import torch

from .._proto.smoothexplain.v1 import explain_pb2 as pb
from ..engine.cpu import slow_precision_reason
from ..engine.spec import SPEC_OPTIONS, ExplainSpec, Method, make_spec
from ..protocol.checks import check_option, finite_float32
from ..protocol.errors import InvalidArgument, LimitExceeded
from ..protocol.options import CAM_METHODS, from_proto, option
from .codec import decode_request, image_to_tensor, tensor_from_message
from .config import Limits, ServingConfig, check_limits

__all__ = ["Decoded", "Incoming", "decode", "parse", "seed_of", "seeded", "spec_of"]

Bounds = tuple[torch.Tensor, torch.Tensor]  # per-channel (low, high) of preprocessed inputs


@dataclass(frozen=True)
class Incoming:
    payload: object  # gRPC bytes, REST body bytes, or a JSON body TorchServe already parsed
    from_grpc: bool = False
    explain_path: bool = False  # REST /explanations/{model}


@dataclass(frozen=True)
class Decoded:
    """A request that passed every check made before the model."""

    request: pb.Request
    inputs: torch.Tensor  # preprocessed, on the serving device
    top_k: int
    crop: tuple[int, int] | None  # (resize, size) of a decoded image; None for a tensor
    spec: ExplainSpec | None  # None: a prediction only
    seed: int = 0  # the explanation's, once `seeded`

    @property
    def from_tensor(self) -> bool:
        return self.request.input.WhichOneof("source") == "tensor"


def parse(incoming: Incoming, limits: Limits) -> pb.Request:
    return decode_request(
        incoming.payload,
        from_grpc=incoming.from_grpc,
        explain_path=incoming.explain_path,
        limits=limits,
    )


def decode(
    request: pb.Request, config: ServingConfig, device: torch.device, bounds: Bounds
) -> Decoded:
    """The request's input tensor, top_k and (for an explanation) spec, in that order."""
    limits, pre = config.limits, config.preprocess
    source = request.input.WhichOneof("source")
    crop = None
    if source == "image":
        x = image_to_tensor(request.input.image, pre, limits)
        crop = (pre.resize, pre.size)
    elif source == "tensor":
        x = tensor_from_message(request.input.tensor, pre, limits)
    else:
        raise InvalidArgument("input must hold an image or a tensor", field="input")
    inputs = x.to(device)
    top_k = request.top_k if request.HasField("top_k") else config.defaults.top_k
    if not 1 <= top_k <= limits.max_top_k:
        raise LimitExceeded(
            f"top_k must be in [1, {limits.max_top_k}] (server limit max_top_k), got {top_k}",
            field="top_k",
        )
    spec = spec_of(request.options, config, bounds) if request.explain else None
    if spec is not None and (slow := slow_precision_reason(spec.precision, device)):
        raise InvalidArgument(f"options.{slow}", field="options.precision")
    return Decoded(request, inputs, top_k, crop, spec)


def seeded(decoded: Decoded, guided_refusal: str | None) -> Decoded:
    """`decoded` with its explanation's seed; a prediction as it is."""
    if decoded.spec is None:
        return decoded
    if decoded.spec.method is Method.GUIDED_BACKPROP and guided_refusal:
        # Known not to apply to this model: refused before it can fail a shared run (which
        # would send every batch-mate through a run of its own).
        raise InvalidArgument(guided_refusal, field="options.method")
    return replace(decoded, seed=seed_of(decoded.request.options))


_CAM_OPTIONS = ("layer", "cam_resolution")


def spec_of(options: pb.ExplainOptions, config: ServingConfig, bounds: Bounds) -> ExplainSpec:
    """The request's spec: its options (from the wire), else the model's defaults (a CAM
    layer left to neither stays None: the service fills in the one it found at load)."""
    asked, defaults = from_proto(options), config.defaults.values
    if asked["baseline"] is not None:
        finite_float32(float(asked["baseline"]), "options.baseline")  # type: ignore[arg-type]
    values = {
        o.name: defaults.get(o.name, o.default) if asked[o.name] is None else asked[o.name]
        for o in SPEC_OPTIONS
    }
    try:
        method = check_option(option("method"), values["method"], "method")
        if method not in CAM_METHODS:  # a model-config's CAM defaults do not reach them
            for name in _CAM_OPTIONS:
                if asked[name] is None:
                    values[name] = option(name).default
        spec = make_spec(**values, bounds=bounds, cam_reshape=config.cam_reshape)
    except InvalidArgument as error:
        raise type(error)(f"options.{error.message}", field=f"options.{error.field}") from None
    check_limits(spec, config.limits)
    return spec


def seed_of(options: pb.ExplainOptions) -> int:
    """The request's seed, within the Python API's range (the proto field is a uint64), or a
    fresh one."""
    if not options.HasField("seed"):
        return secrets.randbits(62)
    seed = check_option(option("seed"), options.seed, "options.seed")
    assert isinstance(seed, int)  # check_option of an int option
    return seed
