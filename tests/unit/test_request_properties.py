"""Property-based tests of request parsing: whatever arrives, one clear answer and no crash.

The data plane is driven directly (no TorchServe) with a tiny model, so hypothesis can try
thousands of bodies in seconds; the real-server corpus is tests/integration/test_bad_inputs.py.
"""

from __future__ import annotations

import json
import re
import string
from typing import Any

import torch
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smoothexplain._proto.smoothexplain.v1 import explain_pb2 as pb
from smoothexplain.protocol.errors import InvalidArgument
from smoothexplain.serving.codec import (
    GRPC_KEY,
    _json_field,
    _shown,
    decode_request,
    message_to_tensor,
    tensor_to_message,
)
from smoothexplain.serving.config import parse_config
from smoothexplain.serving.service import ExplainService, Incoming, Outgoing
from smoothexplain.serving.ts_handler import REASON_MAX, incoming_from, reason_phrase

from .analytic import small_cnn

CONFIG = parse_config(
    {
        "model_class": "tests.unit.analytic:small_cnn",
        "nt_samples_batch_size": 7,
        "preprocess": {"size": 8, "resize": 8, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "defaults": {"nt_samples": 3, "n_steps": 3, "top_k": 3},
        "limits": {
            "max_nt_samples": 16,
            "max_n_steps": 8,
            "max_rows": 40,
            "max_input_bytes": 50_000,
            "max_pixels": 4096,
            "max_tensor_elements": 3 * 32 * 32,
            "max_top_k": 10,
        },
    }
)
SERVICE = ExplainService(small_cnn(), CONFIG, {}, torch.device("cpu"), "tiny")
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _paths(descriptor: Any, prefix: str = "") -> set[str]:
    """Every field path of the Request message ("options.nt_samples", "input.tensor.shape")."""
    found = set()
    for field in descriptor.fields:
        path = prefix + field.name
        found.add(path)
        if field.message_type is not None:
            found |= _paths(field.message_type, path + ".")
    return found


FIELDS = _paths(pb.Request.DESCRIPTOR) | {"body", GRPC_KEY}


def _check(answer: Outgoing, *, grpc: bool) -> pb.Response:
    """The invariants of every answer: 200 or a 4xx with a named field, one-line message."""
    if grpc:
        assert isinstance(answer.body, bytes)
        response = pb.Response.FromString(answer.body)
    else:
        assert isinstance(answer.body, str)
        response = json_format.Parse(answer.body, pb.Response())
    assert answer.status == 200 or 400 <= answer.status < 500, response.error
    if answer.status != 200:
        assert response.error.http_status == answer.status
        assert response.error.grpc_code == "INVALID_ARGUMENT"
        assert response.error.field and "\n" not in response.error.message
    return response


@FAST
@given(data=st.binary(max_size=600), grpc=st.booleans(), explain_path=st.booleans())
def test_any_bytes_get_one_clear_answer(data: bytes, grpc: bool, explain_path: bool) -> None:
    (answer,) = SERVICE.handle([Incoming(data, from_grpc=grpc, explain_path=explain_path)])
    _check(answer, grpc=grpc)


@FAST
@given(
    head=st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"{", b'{"input": ']),
    tail=st.binary(max_size=400),
)
def test_bodies_that_look_like_images_or_json_get_one_clear_answer(
    head: bytes, tail: bytes
) -> None:
    (answer,) = SERVICE.handle([Incoming(head + tail, explain_path=True)])
    _check(answer, grpc=False)


_KEYS = st.sampled_from(
    ["input", "image", "tensor", "shape", "dtype", "data", "options", "nt_samples", "method",
     "explain", "target", "top_k", "sigma", "seed", "topK", "ntSamples", "bogus"]
)  # fmt: skip


def _json_values(keys: st.SearchStrategy[str], text: st.SearchStrategy[str]) -> Any:
    return st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | text,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
        max_leaves=12,
    )


def _answer_json(value: dict[str, Any], parsed: bool) -> tuple[Outgoing, pb.Response]:
    # TorchServe hands application/json bodies over already parsed; others arrive as bytes.
    payload: object = value if parsed else json.dumps(value).encode()
    (answer,) = SERVICE.handle([Incoming(payload, explain_path=True)])
    return answer, _check(answer, grpc=False)


@FAST
@given(
    value=st.dictionaries(_KEYS, _json_values(_KEYS, st.text(max_size=8)), max_size=5),
    parsed=st.booleans(),
)
def test_any_json_object_gets_one_clear_answer(value: dict[str, Any], parsed: bool) -> None:
    answer, response = _answer_json(value, parsed)
    if answer.status != 200:
        assert response.error.field.split(".")[0] in FIELDS | set(value) | {"body"}


def _mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Values from `good` four times in five: most requests get far enough to be computed."""
    return st.integers(0, 4).flatmap(lambda n: bad if n == 0 else good)


_ENUM = _mostly(st.integers(0, 4), st.integers(-1, 9))
_BAD_FLOAT = (
    st.floats(-1, 0, exclude_max=True)
    | st.sampled_from([float("nan"), float("inf"), 1e39, -1e39])
    | st.floats(10, 1e300, exclude_min=True)  # above MAX_SIGMA, and stdevs' 10 x range 4
)


@st.composite
def _requests(draw: st.DrawFn) -> pb.Request:
    """Requests with every field drawn from inside, at the edge of or outside its range."""
    channels = draw(_mostly(st.just(3), st.sampled_from([1, 4])))
    height = draw(_mostly(st.integers(8, 12), st.integers(0, 7)))
    width = draw(_mostly(st.integers(8, 12), st.integers(0, 7)))
    count = channels * height * width
    tensor = tensor_to_message(
        torch.linspace(-1, 1, max(count, 1))[:count].view(channels, height, width)
    )
    if draw(_mostly(st.just(False), st.just(True))):
        tensor.data = tensor.data[: draw(st.integers(0, len(tensor.data)))]
    options = pb.ExplainOptions(
        method=draw(_ENUM),
        nt_type=draw(_ENUM),
        noise=draw(_mostly(st.integers(0, 2), st.integers(-1, 5))),
        ig_rule=draw(_mostly(st.integers(0, 5), st.integers(6, 9))),
        encoding=draw(_ENUM),
        seed=draw(st.integers(0, 2**64 - 1)),
    )
    for name, strategy in (
        ("nt_samples", _mostly(st.integers(1, 16), st.integers(0, 18))),
        ("n_steps", _mostly(st.integers(2, 8), st.integers(0, 9))),
        ("sigma", _mostly(st.floats(0, 0.5), _BAD_FLOAT)),
        ("stdevs", _mostly(st.floats(0, 0.5), _BAD_FLOAT)),
        ("confidence", _mostly(st.floats(0.04, 0.99), st.floats(-0.5, 1.5))),
        ("baseline", _mostly(st.floats(-2, 2), st.sampled_from([float("nan"), float("-inf")]))),
    ):
        if draw(st.booleans()):
            setattr(options, name, draw(strategy))
    request = pb.Request(input=pb.Input(tensor=tensor), explain=draw(st.booleans()))
    request.options.CopyFrom(options)
    if draw(st.booleans()):
        request.target = draw(_mostly(st.integers(0, 4), st.integers(-2, 9)))
    if draw(st.booleans()):
        request.top_k = draw(_mostly(st.integers(1, 10), st.integers(0, 12)))
    return request


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=_requests())
def test_grpc_and_rest_agree_on_every_request(request: pb.Request) -> None:
    text = json_format.MessageToJson(request)
    grpc_answer, rest_answer = SERVICE.handle(
        [Incoming(request.SerializeToString(), from_grpc=True), Incoming(text.encode())]
    )
    via_grpc = _check(grpc_answer, grpc=True)
    via_rest = _check(rest_answer, grpc=False)
    assert grpc_answer.status == rest_answer.status
    assert via_grpc.error.field == via_rest.error.field
    assert via_grpc.error.field in FIELDS | {""}
    if via_grpc.HasField("attribution"):  # same seed, same numbers (to float rounding)
        torch.testing.assert_close(
            message_to_tensor(via_grpc.attribution), message_to_tensor(via_rest.attribution)
        )
    assert via_grpc.HasField("attribution") == via_rest.HasField("attribution")


@FAST
@given(message=st.text())
def test_json_error_fields_are_request_paths(message: str) -> None:
    field = _json_field(message)
    known = field in FIELDS or field.rsplit(".", 1)[0] in FIELDS or "." not in field
    assert field and known


@FAST
@given(message=st.text())
def test_the_http_reason_phrase_is_one_short_printable_line(message: str) -> None:
    phrase = reason_phrase(message)
    assert 0 < len(phrase) <= REASON_MAX
    assert all(" " <= c <= "~" for c in phrase)


@FAST
@given(
    keys=st.lists(st.sampled_from([GRPC_KEY, "body", "data", "explain", "x"]), max_size=4),
    header=st.none() | st.text(alphabet=string.ascii_letters, max_size=5) | st.just({"a": "b"}),
)
def test_the_explain_header_alone_tells_rest_from_grpc(keys: list[str], header: object) -> None:
    row = {key: b"payload" for key in keys}
    incoming = incoming_from(row, header)
    assert incoming.from_grpc is not isinstance(header, str)
    if incoming.from_grpc:
        assert incoming.payload == row.get(GRPC_KEY)
    else:
        assert incoming.explain_path == (str(header).lower() == "true")


# Keys and strings as an attacker writes them: lone surrogates, long runs, names of fields.
_ANY_TEXT = st.text(
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF) | st.characters(), max_size=6
) | st.builds(lambda c, n: c * n, st.sampled_from(["k", "\ud800", "é"]), st.integers(60, 3000))
_ANY_KEYS = _KEYS | _ANY_TEXT


@FAST
@given(
    value=st.dictionaries(_ANY_KEYS, _json_values(_ANY_KEYS, _ANY_TEXT), max_size=4),
    parsed=st.booleans(),
)
def test_any_keys_and_strings_get_one_clear_answer(value: dict[str, Any], parsed: bool) -> None:
    """Issue 18: a lone surrogate or a long key anywhere answered 500 (upb's SystemError)."""
    answer, response = _answer_json(value, parsed)
    assert isinstance(answer.body, str)
    answer.body.encode()  # the answer itself holds no lone surrogate
    if answer.status != 200:
        field = response.error.field
        assert field.split(".")[0] in FIELDS | {"body"} or field in {_shown(k) for k in value}
        assert len(field) < 200


_INTEGER_TEXT = re.compile(r"-?[0-9]{1,20}")


def _json_integer(value: object) -> int | None:
    """The integer a JSON value stands for under our rule (None: refused): a number with no
    fraction (held exactly by a double, if written as one) or a string of decimal digits."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) < 2**53 else None
    if isinstance(value, str) and _INTEGER_TEXT.fullmatch(value):
        return int(value)
    return None


_INTEGER_LIKE = (
    st.integers(-5, 2**64 + 5)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(0, 2**60).map(float)
    | st.booleans()
    | st.integers(-5, 2**64).map(str)
    | st.sampled_from(["7.0", "1e3", " 7", "7 ", "\t7", "+7", "0x7", "1_0", "\u0667", "", "-"])
)


@FAST
@given(value=_INTEGER_LIKE, parsed=st.booleans())
def test_integer_fields_take_exactly_json_integers(value: object, parsed: bool) -> None:
    body = {"input": {"image": ""}, "options": {"seed": value}}
    payload: object = body if parsed else json.dumps(body).encode()
    expected = _json_integer(value)
    try:
        request = decode_request(payload, from_grpc=False, explain_path=True, limits=CONFIG.limits)
    except InvalidArgument as error:
        assert error.field == "options.seed", error.message
        assert expected is None or not 0 <= expected < 2**64  # uint64's range
    else:
        assert expected is not None and request.options.seed == expected


@FAST
@given(value=_INTEGER_LIKE | st.sampled_from([*pb.Method.keys(), "gradient", "METHOD_X"]))
def test_enum_fields_take_a_name_or_an_integer(value: object) -> None:
    body = {"input": {"image": ""}, "options": {"method": value}}
    names: dict[str, int] = dict(pb.Method.items())
    number = names.get(value) if isinstance(value, str) else None
    number = _json_integer(value) if number is None else number
    try:
        request = decode_request(body, from_grpc=False, explain_path=True, limits=CONFIG.limits)
    except InvalidArgument as error:
        assert error.field == "options.method", error.message
        assert number is None or not -(2**31) <= number < 2**31  # an enum is an int32
    else:
        assert number is not None and request.options.method == number
