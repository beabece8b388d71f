"""Issue 18: request parsing and validation defects found by an attack run.

Each bad request goes through `ExplainService.handle` between two good batch-mates (one gRPC,
one REST JSON): it must get a 4xx naming its field, and the batch-mates must still get 200. JSON
bodies are sent both as bytes (we parse them) and already parsed (TorchServe parses
application/json bodies before our handler sees them).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest
import torch
from google.protobuf import json_format

from smoothexplain import InvalidArgument
from smoothexplain._proto.smoothexplain.v1 import explain_pb2 as pb
from smoothexplain.engine.spec import FLOAT32_MAX, MAX_SIGMA, NtType, finite_float32, make_spec
from smoothexplain.serving.codec import tensor_from_message, tensor_to_message
from smoothexplain.serving.config import parse_config
from smoothexplain.serving.service import ExplainService, Incoming, Outgoing

from .analytic import small_cnn

CONFIG = parse_config(
    {
        "model_class": "tests.unit.analytic:small_cnn",
        "preprocess": {"size": 8, "resize": 8, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "defaults": {"nt_samples": 2, "top_k": 3},
    }
)  # model-input bounds [-2, 2]: range 4, so stdevs may be up to 40
X = torch.linspace(-1, 1, 3 * 8 * 8).view(3, 8, 8)
TENSOR_JSON = json.dumps(json_format.MessageToDict(pb.Input(tensor=tensor_to_message(X))))


@pytest.fixture(scope="module")
def service() -> ExplainService:
    return ExplainService(small_cnn(), CONFIG, {}, torch.device("cpu"), "tiny")


def _good() -> pb.Request:
    return pb.Request(
        input=pb.Input(tensor=tensor_to_message(X)),
        explain=True,
        options=pb.ExplainOptions(seed=3, nt_samples=2),
    )


def _response(answer: Outgoing, incoming: Incoming) -> pb.Response:
    if incoming.from_grpc:
        assert isinstance(answer.body, bytes)
        return pb.Response.FromString(answer.body)
    assert isinstance(answer.body, str)
    return json_format.Parse(answer.body, pb.Response())


def _refused_among_good(
    service: ExplainService, bad: Incoming, field: str, status: int = 400
) -> str:
    """Send `bad` between a good gRPC and a good REST request; check all three answers and
    return the refusal's message."""
    batch = [
        Incoming(_good().SerializeToString(), from_grpc=True),
        bad,
        Incoming(json_format.MessageToJson(_good()).encode()),
    ]
    answers = service.handle(batch)
    first, refused, last = (_response(a, i) for a, i in zip(answers, batch, strict=True))
    assert [answers[0].status, answers[2].status] == [200, 200]
    assert first.attribution.data and first.attribution == last.attribution
    assert answers[1].status == status, refused.error.message
    assert refused.error.field == field, refused.error.message
    assert refused.error.grpc_code == "INVALID_ARGUMENT"
    message = refused.error.message
    assert message and "\n" not in message and len(message) < 500
    return message


def _json_body(fragment: str) -> str:
    """A JSON Request: `fragment` (raw JSON text, escapes kept as sent) after a valid input."""
    return f'{{"input": {TENSOR_JSON}, "explain": true, {fragment}}}'


def _both_json_forms(text: str) -> list[Incoming]:
    return [Incoming(text.encode()), Incoming(json.loads(text))]


# (JSON text after a valid input, the field refused)
JSON_ONLY_CASES = [
    # 1. lone UTF-16 surrogates and long keys
    (r'"\ud800": 1', "\\ud800"),
    (r'"\udfffx\ud800": 1', "\\udfffx\\ud800"),
    (r'"options": {"\ud800": 1}', "options.\\ud800"),
    (r'"options": {"method": "\ud800"}', "options.method"),
    (r'"options": {"method": "METHOD_\udc00"}', "options.method"),
    (r'"options": {"sigma": "\ud800"}', "options.sigma"),
    (r'"options": {"seed": "\ud8007"}', "options.seed"),
    ('"' + "k" * 100_000 + '": 1', "k" * 60 + "..."),
    ('"options": {"' + "\\ud800" * 1000 + '": 1}', "options." + "\\ud800" * 10 + "..."),
    # 2. JSON booleans (and fractions) where an enum belongs
    ('"options": {"method": true}', "options.method"),
    ('"options": {"nt_type": false}', "options.nt_type"),
    ('"options": {"encoding": true}', "options.encoding"),
    ('"options": {"method": 1.5}', "options.method"),
    ('"options": {"precision": "1.0"}', "options.precision"),
    # 3. integers written as strings that are no decimal integers
    ('"options": {"seed": "7.0"}', "options.seed"),
    ('"options": {"seed": "1e3"}', "options.seed"),
    ('"options": {"seed": " 7"}', "options.seed"),
    (r'"options": {"seed": "\t7"}', "options.seed"),
    ('"options": {"seed": "7 "}', "options.seed"),
    ('"options": {"nt_samples": "1_0"}', "options.nt_samples"),
    (r'"options": {"n_steps": "\u0663"}', "options.n_steps"),  # an Arabic-Indic 3
    ('"top_k": "+3"', "top_k"),
    ('"top_k": ""', "top_k"),
    ('"target": "0x1"', "target"),
    ('"target": true', "target"),
    ('"deadline_unix_ms": "1e13"', "deadline_unix_ms"),
    ('"options": {"seed": 9007199254740993.0}', "options.seed"),  # a double cannot hold it
    ('"options": {"seed": 1e300}', "options.seed"),
    # doubles: booleans and loosely written strings
    ('"options": {"sigma": true}', "options.sigma"),
    ('"options": {"sigma": " 0.1"}', "options.sigma"),
    ('"options": {"stdevs": "1_0"}', "options.stdevs"),
    ('"options": {"sigma": NaN}', "options.sigma"),
    ('"options": {"confidence": "nan"}', "options.confidence"),
    ('"options": {"baseline": "0x1p3"}', "options.baseline"),
]


@pytest.mark.parametrize(("fragment", "field"), JSON_ONLY_CASES)
def test_json_content_is_refused_naming_its_field(
    service: ExplainService, fragment: str, field: str
) -> None:
    for bad in _both_json_forms(_json_body(fragment)):
        _refused_among_good(service, bad, field)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (r'{"input": {"image": "\ud800"}}', "input.image"),
        (r'{"input": {"tensor": {"\ud800": 1}}}', "input.tensor.\\ud800"),
        (r'{"input": {"tensor": {"shape": [3, "8.0", 8]}}}', "input.tensor.shape"),
        (r'{"input": {"tensor": {"shape": [3, true, 8]}}}', "input.tensor.shape"),
        (r'{"input": {"tensor": {"shape": [3, null, 8]}}}', "input.tensor.shape"),
        (r'{"input": {"tensor": {"dtype": false}}}', "input.tensor.dtype"),
        ('{"input": {"image": "AAAA"}, "explain": 1}', "explain"),
    ],
)
def test_nested_input_content_is_refused(service: ExplainService, text: str, field: str) -> None:
    for bad in _both_json_forms(text):
        _refused_among_good(service, bad, field)


def test_surrogate_error_messages_escape_it(service: ExplainService) -> None:
    for bad in _both_json_forms(_json_body(r'"options": {"\ud800": 1}')):
        message = _refused_among_good(service, bad, "options.\\ud800")
        message.encode()  # no lone surrogate left: answers and status lines can carry it
        assert "is not a field of ExplainOptions" in message


@pytest.mark.parametrize(
    "payload",
    [
        {("a", "b"): 1},  # a key json.loads never makes
        {5: 1},
        {"input": {"image": b"raw"}},  # a value no JSON parser makes
        {"options": {"method": object()}},
    ],
)
def test_parsed_bodies_of_any_python_content_are_refused(
    service: ExplainService, payload: dict[Any, Any]
) -> None:
    (answer,) = service.handle([Incoming(payload, explain_path=True)])
    response = json_format.Parse(answer.body, pb.Response())
    assert answer.status == 400 and response.error.field, response.error.message


@pytest.mark.parametrize(
    ("payload", "field", "status"),
    [
        ("\ud800", "body", 400),  # TorchServe's json.loads of the JSON string "\ud800"
        ('{"top_k": 2, "\udc00": 1}', "body", 400),  # a JSON string holding JSON
        ('{"top_k": 2, "\\udc00": 1}', "\\udc00", 400),  # ... with the escape in it
        ([1, 2], "body", 415),  # a JSON array
        (True, "body", 415),
        (7.5, "body", 415),
    ],
)
def test_parsed_bodies_that_are_no_objects(
    service: ExplainService, payload: object, field: str, status: int
) -> None:
    _refused_among_good(service, Incoming(payload, explain_path=True), field, status)


@pytest.mark.parametrize(("text", "value"), [('"7"', 7), ("7", 7), ("7.0", 7), ("1e3", 1000)])
def test_integers_proto3_json_accepts(service: ExplainService, text: str, value: int) -> None:
    """A quoted integer (proto3 JSON writes int64 so) and an integral JSON number (the spec
    accepts exponents) are the same seed as the plain number."""
    body = _json_body(f'"options": {{"seed": {text}, "nt_samples": 2}}')
    for incoming in _both_json_forms(body):
        (answer,) = service.handle([incoming])
        response = _response(answer, incoming)
        assert answer.status == 200 and response.seed == value == response.options.seed


def test_enum_numbers_and_names_are_both_accepted(service: ExplainService) -> None:
    named, numbered = (
        _json_body(f'"options": {{"method": {m}, "seed": 1, "nt_samples": 2}}')
        for m in ('"METHOD_INPUT_X_GRADIENT"', "2")
    )
    answers = service.handle([Incoming(named.encode()), Incoming(json.loads(numbered))])
    first, second = (json.loads(a.body) for a in answers)
    assert [a.status for a in answers] == [200, 200]
    assert first["options"]["method"] == second["options"]["method"] == "METHOD_INPUT_X_GRADIENT"
    assert first["attribution"] == second["attribution"]


def test_duplicate_keys_we_parse_are_refused_parsed_ones_cannot_be_seen(
    service: ExplainService,
) -> None:
    """We refuse duplicates in bodies we parse; TorchServe's json.loads (application/json)
    keeps the last one, so a parsed body holds no trace of them: here the second input."""
    text = _json_body(r'"input": {"image": "AAAA"}')  # input twice: the tensor, then an image
    message = _refused_among_good(service, Incoming(text.encode()), "body")
    assert "input" in message and "twice" in message
    nested = _json_body('"options": {"seed": 1, "seed": 2}')
    assert "seed" in _refused_among_good(service, Incoming(nested.encode()), "body")
    # TorchServe would hand over json.loads(text): only the image (not decodable) is left.
    _refused_among_good(service, Incoming(json.loads(text)), "input.image", status=415)


# -- the same options over gRPC bytes and JSON --------------------------------------------------

OPTION_CASES: list[tuple[dict[str, Any], str]] = [
    ({"sigma": MAX_SIGMA + 0.5}, "options.sigma"),
    ({"sigma": 1e39}, "options.sigma"),
    ({"stdevs": 40.5}, "options.stdevs"),  # above 10 x the range 4
    ({"stdevs": 1e39}, "options.stdevs"),
    ({"tolerance": 1e39}, "options.tolerance"),
    ({"nt_type": pb.NT_TYPE_VARGRAD, "nt_samples": 1}, "options.nt_samples"),
    ({"nt_type": pb.NT_TYPE_VARGRAD, "sigma": 0.0}, "options.sigma"),
    ({"nt_type": pb.NT_TYPE_VARGRAD, "stdevs": 0.0}, "options.stdevs"),
    ({"noise": pb.NOISE_ADAPTIVE, "confidence": 1e-300}, "options.confidence"),
    ({"noise": pb.NOISE_ADAPTIVE, "confidence": 0.01}, "options.confidence"),
]


def _option_request(options: dict[str, Any]) -> pb.Request:
    request = _good()
    request.options.MergeFrom(pb.ExplainOptions(**options))
    return request


@pytest.mark.parametrize(("options", "field"), OPTION_CASES)
def test_option_bounds_over_grpc_and_json(
    service: ExplainService, options: dict[str, Any], field: str
) -> None:
    request = _option_request(options)
    _refused_among_good(service, Incoming(request.SerializeToString(), from_grpc=True), field)
    text = json_format.MessageToJson(request)
    for bad in _both_json_forms(text):
        _refused_among_good(service, bad, field)


@pytest.mark.parametrize(
    "options",
    [
        {"sigma": MAX_SIGMA},
        {"stdevs": 40.0},
        {"nt_type": pb.NT_TYPE_VARGRAD, "nt_samples": 2},
        {"nt_type": pb.NT_TYPE_VARGRAD, "noise": pb.NOISE_ADAPTIVE, "sigma": 0.0},
        {"nt_type": pb.NT_TYPE_SMOOTHGRAD_SQ, "nt_samples": 1},
        {"noise": pb.NOISE_ADAPTIVE, "confidence": 0.04},
    ],
)
def test_option_edges_are_answered(service: ExplainService, options: dict[str, Any]) -> None:
    request = _option_request(options)
    answers = service.handle(
        [
            Incoming(request.SerializeToString(), from_grpc=True),
            Incoming(json_format.MessageToJson(request).encode()),
        ]
    )
    via_grpc = pb.Response.FromString(answers[0].body)  # type: ignore[arg-type]
    assert [a.status for a in answers] == [200, 200], via_grpc.error.message
    attribution = np.frombuffer(via_grpc.attribution.data, dtype="<f4")
    assert np.isfinite(attribution).all() and np.abs(attribution).max() > 0


def test_vargrad_two_samples_is_not_all_zero(service: ExplainService) -> None:
    request = _option_request({"nt_type": pb.NT_TYPE_VARGRAD, "nt_samples": 2})
    (answer,) = service.handle([Incoming(request.SerializeToString(), from_grpc=True)])
    response = pb.Response.FromString(answer.body)  # type: ignore[arg-type]
    attribution = np.frombuffer(response.attribution.data, dtype="<f4")
    assert (attribution >= 0).all() and (attribution > 0).any()


def test_nt_type_none_ignores_nt_samples(service: ExplainService) -> None:
    request = _option_request({"nt_type": pb.NT_TYPE_NONE, "nt_samples": 7})
    (answer,) = service.handle([Incoming(request.SerializeToString(), from_grpc=True)])
    response = pb.Response.FromString(answer.body)  # type: ignore[arg-type]
    assert answer.status == 200 and response.nt_samples == 1 and response.rows == 1


# -- tensor input values -------------------------------------------------------------------------


def _tensor(values: np.ndarray[Any, Any], dtype: pb.DType.ValueType) -> pb.Request:
    data = np.broadcast_to(values, (3, 8, 8)).tobytes()
    tensor = pb.Tensor(shape=[3, 8, 8], dtype=dtype, data=data)
    return pb.Request(input=pb.Input(tensor=tensor), explain=True, options=_good().options)


@pytest.mark.parametrize(
    ("values", "dtype"),
    [
        (np.float64(1e39), pb.DTYPE_FLOAT64),
        (np.float64(3.5e38), pb.DTYPE_FLOAT64),
        (np.float64(-1e300), pb.DTYPE_FLOAT64),
        (np.float64(np.nan), pb.DTYPE_FLOAT64),
        (np.float16(np.inf), pb.DTYPE_FLOAT16),
        (np.float32(-np.inf), pb.DTYPE_FLOAT32),
    ],
)
def test_tensor_values_beyond_float32_are_refused(
    service: ExplainService, values: np.ndarray[Any, Any], dtype: pb.DType.ValueType
) -> None:
    """Before, a float64 above float32's range became inf in the cast (with a RuntimeWarning,
    an error under this suite's filterwarnings) and was then refused as "NaN or Inf"."""
    request = _tensor(values, dtype)
    field = "input.tensor.data"
    message = _refused_among_good(
        service, Incoming(request.SerializeToString(), from_grpc=True), field
    )
    assert "float32" in message
    for bad in _both_json_forms(json_format.MessageToJson(request)):
        _refused_among_good(service, bad, field)


@pytest.mark.parametrize(
    ("values", "dtype"),
    [
        (np.float64(FLOAT32_MAX), pb.DTYPE_FLOAT64),
        (np.float64(1e-320), pb.DTYPE_FLOAT64),  # float64 subnormal: 0 in float32
        (np.float32(1e-45), pb.DTYPE_FLOAT32),  # float32 subnormal
        (np.float16(6e-8), pb.DTYPE_FLOAT16),  # float16 subnormal
    ],
)
def test_tensor_values_float32_holds_are_decoded(
    values: np.ndarray[Any, Any], dtype: pb.DType.ValueType
) -> None:
    tensor = _tensor(values, dtype).input.tensor
    decoded = tensor_from_message(tensor, CONFIG.preprocess, CONFIG.limits)
    expected = torch.from_numpy(np.broadcast_to(values, (3, 8, 8)).astype(np.float32))
    assert decoded.dtype == torch.float32 and torch.equal(decoded, expected)


# -- the reusable float32 check and the spec -------------------------------------------------


@pytest.mark.parametrize("value", [0.0, -0.0, 1e-45, 5e-324, FLOAT32_MAX, -FLOAT32_MAX, 1e38])
def test_finite_float32_keeps_what_float32_holds(value: float) -> None:
    assert finite_float32(value, "options.baseline") == value


@pytest.mark.parametrize(
    "value", [1e39, -1e39, 3.4028236e38, float("inf"), float("-inf"), float("nan"), 1e308]
)
def test_finite_float32_refuses_the_rest(value: float) -> None:
    with pytest.raises(InvalidArgument) as info:
        finite_float32(value, "options.baseline")
    assert info.value.field == "options.baseline" and "float32" in info.value.message
    with np.errstate(over="ignore", invalid="ignore"):
        assert not np.isfinite(np.float32(value))  # what the engine's cast would make of it


def test_finite_float32_covers_the_baseline_the_service_fills_in() -> None:
    """The overflow the service side meets: full_like refuses doubles float32 cannot hold."""
    with pytest.raises(RuntimeError, match="overflow"):
        torch.full_like(X, 1e39)
    torch.full_like(X, finite_float32(FLOAT32_MAX, "options.baseline"))


def test_stdevs_cap_follows_the_widest_declared_range() -> None:
    low = torch.zeros(3, 1, 1)
    high = torch.tensor([1.0, 3.0, 2.0]).view(3, 1, 1)
    assert make_spec(stdevs=30.0, bounds=(low, high)).stdevs == 30.0
    with pytest.raises(InvalidArgument, match=r"stdevs .*\[0.0, 30\]") as info:
        make_spec(stdevs=30.001, bounds=(low, high))
    assert info.value.field == "stdevs"
    assert make_spec(stdevs=1e30).stdevs == 1e30  # no bounds: the input's own range, unknown


def test_nt_type_none_spec_draws_one_clean_pass() -> None:
    spec = make_spec(nt_type="none", nt_samples=9)
    assert spec.nt_type is NtType.NONE and spec.samples == 1 and spec.rows == 1


def test_base64_is_still_left_to_json_format(service: ExplainService) -> None:
    """The schema walk leaves base64 to json_format: an undecodable image stays a 415."""
    body = json.dumps({"input": {"image": base64.b64encode(b"not an image").decode()}})
    _refused_among_good(service, Incoming(body.encode()), "input.image", status=415)
