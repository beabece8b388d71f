"""The data plane without TorchServe: decoding, per-request errors, encodings, limits."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pytest
import torch
from google.protobuf import json_format
from PIL import Image

from smoothexplain import explain
from smoothexplain._proto.smoothexplain.v1 import explain_pb2 as pb
from smoothexplain.serving.codec import message_to_tensor, tensor_to_message
from smoothexplain.serving.config import parse_config
from smoothexplain.serving.service import ExplainService, Incoming

from .analytic import small_cnn

CONFIG = parse_config(
    {
        "model_class": "tests.unit.analytic:small_cnn",
        "nt_samples_batch_size": 5,
        "preprocess": {"size": 8, "resize": 8, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "defaults": {"nt_samples": 4, "top_k": 3},
        "limits": {"max_nt_samples": 64, "max_input_bytes": 100_000, "max_pixels": 10_000},
    }
)


@pytest.fixture(scope="module")
def service() -> ExplainService:
    labels = {i: f"class{i}" for i in range(5)}
    return ExplainService(small_cnn(), CONFIG, labels, torch.device("cpu"), "tiny")


def _png(size: int = 8, seed: int = 0, flat: bool = False) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    pixels = pixels * 0 + 7 if flat else pixels
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _tensor_request(x: torch.Tensor, **options: Any) -> pb.Request:
    return pb.Request(
        input=pb.Input(tensor=tensor_to_message(x)),
        explain=True,
        options=pb.ExplainOptions(**options),
    )


def _grpc(service: ExplainService, *requests: pb.Request) -> list[pb.Response]:
    answers = service.handle([Incoming(r.SerializeToString(), from_grpc=True) for r in requests])
    return [pb.Response.FromString(a.body) for a in answers]  # type: ignore[arg-type]


def test_grpc_explain_equals_the_python_api(service: ExplainService) -> None:
    x = torch.randn(3, 8, 8)
    (response,) = _grpc(
        service,
        _tensor_request(x, seed=9, nt_samples=6, method=pb.METHOD_INTEGRATED_GRADIENTS, n_steps=5),
    )
    assert not response.HasField("error")
    expected = explain(
        small_cnn(),
        x[None],
        response.target,
        method="integrated_gradients",
        nt_samples=6,
        n_steps=5,
        seed=9,
        sigma=0.15,
        bounds=service.bounds,
    )
    torch.testing.assert_close(message_to_tensor(response.attribution), expected[0])
    assert response.seed == 9 and response.nt_samples == 6 and response.rows == 30
    assert response.target == response.top_k[0].index  # default target: top-1
    assert len(response.top_k) == 3 and response.top_k[0].label.startswith("class")


def test_rest_image_body_on_explanations_path(service: ExplainService) -> None:
    (answer,) = service.handle([Incoming(_png(), explain_path=True)])
    assert answer.status == 200
    body = json.loads(answer.body)
    assert body["attribution"]["shape"] == [3, 8, 8] and body["seed"]


def test_rest_json_predict_has_no_attribution(service: ExplainService) -> None:
    request = pb.Request(input=pb.Input(image=_png()), top_k=2)
    (answer,) = service.handle([Incoming(json_format.MessageToJson(request).encode())])
    body = json.loads(answer.body)
    assert answer.status == 200 and len(body["top_k"]) == 2 and "attribution" not in body


def test_a_bad_request_fails_alone(service: ExplainService) -> None:
    good = _tensor_request(torch.randn(3, 8, 8), seed=1)
    bad = _tensor_request(torch.randn(3, 8, 8), seed=1, nt_samples=1000)
    answers = service.handle(
        [
            Incoming(good.SerializeToString(), from_grpc=True),
            Incoming(b"\x89PNG\r\n\x1a\nbroken", explain_path=True),
            Incoming(bad.SerializeToString(), from_grpc=True),
            Incoming(good.SerializeToString(), from_grpc=True),
        ]
    )
    assert [a.status for a in answers] == [200, 400, 400, 200]
    assert "input.image" in answers[1].message
    failed = pb.Response.FromString(answers[2].body)  # type: ignore[arg-type]
    assert failed.error.grpc_code == "INVALID_ARGUMENT"
    assert failed.error.field == "options.nt_samples" and "max_nt_samples" in failed.error.message
    first, last = (pb.Response.FromString(a.body) for a in (answers[0], answers[3]))  # type: ignore[arg-type]
    assert first.attribution == last.attribution and first.attribution.data


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.Request(input=pb.Input(image=_png()), explain=True, target=5), "target"),
        (pb.Request(input=pb.Input(image=_png()), top_k=0), "top_k"),
        (pb.Request(explain=True), "input"),
        (pb.Request(input=pb.Input(image=_png(200, flat=True))), "input.image"),
        (
            pb.Request(input=pb.Input(tensor=pb.Tensor(shape=[3, 8], dtype=pb.DTYPE_FLOAT32))),
            "input.tensor.shape",
        ),
        (
            pb.Request(
                input=pb.Input(
                    tensor=pb.Tensor(shape=[3, 8, 8], dtype=pb.DTYPE_FLOAT32, data=b"1234")
                )
            ),
            "input.tensor.data",
        ),
        (_tensor_request(torch.full((3, 8, 8), float("nan"))), "input.tensor.data"),
        (
            _tensor_request(torch.zeros(3, 8, 8), confidence=1.5, noise=pb.NOISE_ADAPTIVE),
            "options.confidence",
        ),
        (_tensor_request(torch.zeros(3, 8, 8), method=42), "options.method"),
        (
            _tensor_request(
                torch.zeros(3, 8, 8),
                n_steps=1,
                ig_rule=pb.IG_RULE_RIEMANN_TRAPEZOID,
                method=pb.METHOD_INTEGRATED_GRADIENTS,
            ),
            "options.n_steps",
        ),
    ],
)
def test_errors_name_the_field(service: ExplainService, request_: pb.Request, field: str) -> None:
    (response,) = _grpc(service, request_)
    assert response.error.field == field, response.error.message
    assert response.error.http_status == 400 and response.error.grpc_code == "INVALID_ARGUMENT"


def test_undecodable_bodies_are_client_errors(service: ExplainService) -> None:
    answers = service.handle(
        [
            Incoming(b"hello"),
            Incoming(b"{not json"),
            Incoming(b""),
            Incoming(b"\x08\x99\x99", from_grpc=True),
            Incoming(b"x" * 200_000),
        ]
    )
    assert [a.status for a in answers] == [415, 400, 400, 400, 400]
    assert "max_input_bytes" in answers[4].message


def test_json_with_unknown_enum_names_the_field(service: ExplainService) -> None:
    body = {"input": {"image": ""}, "explain": True, "options": {"method": "METHOD_MAGIC"}}
    (answer,) = service.handle([Incoming(json.dumps(body).encode())])
    assert answer.status == 400 and "method" in answer.message


def test_float16_and_png_encodings(service: ExplainService) -> None:
    x = torch.randn(3, 8, 8)
    half, png = _grpc(
        service,
        _tensor_request(x, seed=2, encoding=pb.ENCODING_FLOAT16),
        _tensor_request(x, seed=2, encoding=pb.ENCODING_PNG),
    )
    assert half.attribution.dtype == pb.DTYPE_FLOAT16 and len(half.attribution.data) == 3 * 64 * 2
    assert not png.HasField("attribution")
    assert Image.open(io.BytesIO(png.heatmap_png)).size == (8, 8)


def test_response_echoes_the_applied_options(service: ExplainService) -> None:
    x = torch.randn(3, 8, 8)
    (response,) = _grpc(service, _tensor_request(x, method=pb.METHOD_INTEGRATED_GRADIENTS))
    applied = response.options
    assert applied.method == pb.METHOD_INTEGRATED_GRADIENTS
    assert applied.nt_type == pb.NT_TYPE_SMOOTHGRAD and applied.noise == pb.NOISE_GAUSSIAN
    assert applied.nt_samples == 4 and applied.n_steps == 50 and applied.sigma == 0.15
    assert applied.seed == response.seed and applied.encoding == pb.ENCODING_FLOAT32
    # Rerunning with the echoed options reproduces the answer exactly.
    (again,) = _grpc(
        service,
        pb.Request(input=pb.Input(tensor=tensor_to_message(x)), explain=True, options=applied),
    )
    assert again.attribution == response.attribution


def test_the_configured_default_encoding_applies() -> None:
    config = parse_config(
        {
            "model_class": "tests.unit.analytic:small_cnn",
            "preprocess": {"size": 8, "resize": 8},
            "defaults": {"nt_samples": 2, "encoding": "png"},
        }
    )
    service = ExplainService(small_cnn(), config, {}, torch.device("cpu"))
    (response,) = _grpc(service, _tensor_request(torch.randn(3, 8, 8)))
    assert response.heatmap_png and not response.HasField("attribution")


def test_image_answers_say_how_the_image_was_cut(service: ExplainService) -> None:
    (image,) = _grpc(service, pb.Request(input=pb.Input(image=_png(20)), explain=True))
    assert image.HasField("crop") and (image.crop.resize, image.crop.size) == (8, 8)
    (tensor,) = _grpc(service, _tensor_request(torch.zeros(3, 8, 8)))
    assert not tensor.HasField("crop")  # a tensor input was never cut
    (failed,) = _grpc(service, pb.Request(input=pb.Input(image=b"\x89PNG broken")))
    assert failed.HasField("error") and not failed.HasField("crop")


def test_a_request_that_runs_out_of_memory_gets_503_alone(
    service: ExplainService, monkeypatch: pytest.MonkeyPatch
) -> None:
    import smoothexplain.protocol.images

    def exhausted(*_args: object) -> None:
        raise MemoryError

    monkeypatch.setattr(smoothexplain.protocol.images, "resize_crop", exhausted)
    image = pb.Request(input=pb.Input(image=_png(8)), explain=True)
    failed, served = _grpc(service, image, _tensor_request(torch.zeros(3, 8, 8)))
    assert failed.error.http_status == 503 and failed.error.grpc_code == "RESOURCE_EXHAUSTED"
    assert not served.HasField("error")


def test_rest_json_names_class_zero_too(service: ExplainService) -> None:
    """proto3 JSON leaves plain zeros out; index and target are optional fields so that a
    JSON client reading top_k[i]["index"] or "target" finds class 0 as well."""
    request = pb.Request(input=pb.Input(image=_png()), explain=True, top_k=5, target=0)
    (answer,) = service.handle([Incoming(json_format.MessageToJson(request).encode())])
    body = json.loads(answer.body)
    assert sorted(score["index"] for score in body["top_k"]) == [0, 1, 2, 3, 4]
    assert body["target"] == 0


def test_rest_json_shows_seed_zero_and_probability_zero(service: ExplainService) -> None:
    """The same for the seed used (0 is a seed like any other) and a probability that
    underflows to 0 (scores far apart: a tensor of huge values)."""
    request = pb.Request(
        input=pb.Input(tensor=tensor_to_message(torch.full((3, 8, 8), 1e4))),
        explain=True,
        top_k=5,
        options=pb.ExplainOptions(seed=0, nt_samples=2, stdevs=1.0),
    )
    (answer,) = service.handle([Incoming(json_format.MessageToJson(request).encode())])
    body = json.loads(answer.body)
    assert body["seed"] == "0" and body["options"]["seed"] == "0"
    probabilities = [score.get("probability") for score in body["top_k"]]
    assert None not in probabilities and 0.0 in probabilities, probabilities
