"""The client and CLI against in-process stand-ins for TorchServe's gRPC and REST front ends.

Both fakes check the bearer token like TorchServe does and hand the request to a real
`ExplainService`, so everything between the client and the handler's data plane is exercised
without Java: the gRPC path (PredictionsRequest map key, metadata, Response in the reply
bytes), the REST path (JSON mapping, status codes, TorchServe's own error bodies), token
resolution and the CLI's files, output and exit codes.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from PIL import Image

from smoothexplain._proto.smoothexplain.v1 import explain_pb2 as pb
from smoothexplain._proto.torchserve import inference_pb2, inference_pb2_grpc
from smoothexplain.client.cli import build_parser, main
from smoothexplain.client.remote import (
    KEY_FILE_ENV,
    TOKEN_ENV,
    ExplainError,
    SmoothExplainClient,
    Transport,
    _http_for,
    attribution,
    resolve_token,
    status_for_http,
)
from smoothexplain.engine import cpu
from smoothexplain.engine.cpu import CpuSupport
from smoothexplain.engine.spec import Method
from smoothexplain.protocol.errors import InvalidArgument
from smoothexplain.protocol.local_server import STATE_DIR_ENV
from smoothexplain.serving.codec import GRPC_KEY
from smoothexplain.serving.config import parse_config
from smoothexplain.serving.service import ExplainService, Incoming

from .analytic import small_cnn
from .fake_frontends import JsonHandler, serving_grpc, serving_http

MODEL = "tiny"
TOKEN = "test-inference-key-7f3a"
TRANSPORTS: tuple[Transport, ...] = ("grpc", "rest")
CONFIG = parse_config(
    {
        "model_class": "tests.unit.analytic:small_cnn",
        "nt_samples_batch_size": 5,
        "preprocess": {"size": 8, "resize": 8, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "defaults": {"nt_samples": 4, "top_k": 3},
        "limits": {"max_nt_samples": 64, "max_input_bytes": 100_000, "max_pixels": 10_000},
    }
)


# -- fake TorchServe front ends -------------------------------------------------------------


@dataclass
class Backend:
    """The one model worker both front ends share (TorchServe serialises a worker's batches)."""

    service: ExplainService
    lock: threading.Lock
    calls: int = 0

    def handle(self, incoming: Incoming) -> tuple[int, bytes]:
        with self.lock:
            self.calls += 1
            (answer,) = self.service.handle([incoming])
        body = answer.body.encode() if isinstance(answer.body, str) else answer.body
        return answer.status, body


class FakeInference(inference_pb2_grpc.InferenceAPIsServiceServicer):
    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def Predictions(
        self, request: inference_pb2.PredictionsRequest, context: grpc.ServicerContext
    ) -> inference_pb2.PredictionResponse:
        if dict(context.invocation_metadata()).get("authorization") != f"Bearer {TOKEN}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "token authorization failed")
        if request.model_name != MODEL:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Model not found: {request.model_name}")
        _, body = self.backend.handle(Incoming(request.input[GRPC_KEY], from_grpc=True))
        return inference_pb2.PredictionResponse(prediction=body)  # gRPC OK whatever the status


class FakeRest(JsonHandler):
    backend: Backend  # set on a subclass per server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":  # TorchServe 0.12's answer
            message = "Token Authorization failed. Token either incorrect, expired, or missing"
            self._send(400, {"code": 400, "type": "InvalidKeyException", "message": message})
            return
        verb, _, model = self.path.strip("/").partition("/")
        if verb not in ("predictions", "explanations") or model != MODEL:
            message = f"Model not found: {model}"
            self._send(404, {"code": 404, "type": "ModelNotFoundException", "message": message})
            return
        incoming = Incoming(body, explain_path=self.path.startswith("/explanations"))
        status, answer = self.backend.handle(incoming)
        self._send(status, answer)

    def _send(self, status: int, body: bytes | dict[str, Any]) -> None:
        self.send_json(status, json.dumps(body).encode() if isinstance(body, dict) else body)


@dataclass(frozen=True)
class Servers:
    backend: Backend
    grpc_port: int
    rest_port: int

    def client(self, transport: Transport, **kwargs: Any) -> SmoothExplainClient:
        kwargs.setdefault("token", TOKEN)
        return SmoothExplainClient(
            transport=transport,
            grpc_port=self.grpc_port,
            rest_port=self.rest_port,
            timeout=10.0,
            **kwargs,
        )

    def argv(self, transport: Transport) -> list[str]:
        return [
            "--model",
            MODEL,
            "--transport",
            transport,
            "--grpc-port",
            str(self.grpc_port),
            "--rest-port",
            str(self.rest_port),
            "--timeout",
            "10",
        ]


@pytest.fixture(scope="module")
def backend() -> Backend:
    labels = {i: f"class{i}" for i in range(5)}
    service = ExplainService(small_cnn(), CONFIG, labels, torch.device("cpu"), MODEL)
    return Backend(service, threading.Lock())


@pytest.fixture(scope="module")
def grpc_port(backend: Backend) -> Iterator[int]:
    # The other RPCs keep the generated base's UNIMPLEMENTED answers (abstract only in the stubs).
    with serving_grpc(FakeInference(backend)) as port:  # type: ignore[abstract]
        yield port


@pytest.fixture(scope="module")
def rest_port(backend: Backend) -> Iterator[int]:
    handler = type("BoundFakeRest", (FakeRest,), {"backend": backend})
    with serving_http(handler) as port:
        yield port


@pytest.fixture
def servers(
    backend: Backend, grpc_port: int, rest_port: int, monkeypatch: pytest.MonkeyPatch
) -> Servers:
    for name in (TOKEN_ENV, KEY_FILE_ENV):  # the developer's own settings must not leak in
        monkeypatch.delenv(name, raising=False)
    return Servers(backend, grpc_port, rest_port)


def _png(width: int = 10, height: int = 12, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _key_file(path: Path, key: str) -> Path:
    keys = {
        "management": {"key": "management-key", "expiration time": "2030-01-01T00:00:00Z"},
        "inference": {"key": key, "expiration time": "2030-01-01T00:00:00Z"},
        "API": {"key": "api-key"},
    }
    path.write_text(json.dumps(keys), encoding="utf-8")
    return path


# -- client -----------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["tensor", "image"])
def test_grpc_and_rest_give_the_same_attribution(servers: Servers, source: str) -> None:
    image: bytes | torch.Tensor = (
        torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(1))
        if source == "tensor"
        else _png()
    )
    answers = {}
    for transport in TRANSPORTS:
        with servers.client(transport) as client:
            answers[transport] = client.explain(MODEL, image, seed=7, nt_samples=4, top_k=2)
    by_grpc, by_rest = answers["grpc"], answers["rest"]
    assert torch.equal(attribution(by_grpc), attribution(by_rest))
    assert attribution(by_grpc).shape == (3, 8, 8)
    assert by_grpc.seed == by_rest.seed == 7 and by_grpc.nt_samples == 4
    assert by_grpc.target == by_rest.target == by_grpc.top_k[0].index
    assert len(by_rest.top_k) == 2 and by_rest.model == MODEL


def test_enum_strings_map_to_proto_values(servers: Servers) -> None:
    x = torch.randn(3, 8, 8)
    with servers.client("grpc") as client:
        half = client.explain(MODEL, x, seed=3, method="input_x_gradient", encoding="float16")
        full = client.explain(
            MODEL, x, seed=3, method="input_x_gradient", encoding="float32_and_png"
        )
        ig = client.explain(
            MODEL,
            x,
            seed=3,
            method="integrated_gradients",
            nt_type="none",
            n_steps=5,
            ig_rule="riemann_trapezoid",
            return_convergence_delta=True,
        )
    assert half.attribution.dtype == pb.DTYPE_FLOAT16 and not half.heatmap_png
    assert attribution(half).dtype == torch.float32
    torch.testing.assert_close(attribution(half), attribution(full), atol=2e-3, rtol=2e-3)
    assert full.heatmap_png.startswith(b"\x89PNG")
    assert ig.rows == 5 and ig.HasField("convergence_delta")


def test_sampling_tolerance_and_precision_reach_the_engine(
    servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    native = CpuSupport("AVX512", frozenset({"avx512_bf16"}))  # bf16 runs on any test CPU
    monkeypatch.setattr(cpu, "cpu_support", lambda: native)
    x = torch.randn(3, 8, 8)
    with servers.client("grpc") as client:
        stopped = client.explain(MODEL, x, seed=1, nt_samples=64, tolerance=0.5)
        qmc = client.explain(MODEL, x, seed=1, nt_samples=8, noise_sampling="qmc")
        iid = client.explain(MODEL, x, seed=1, nt_samples=8, noise_sampling="iid")
        low = client.explain(MODEL, x, seed=1, nt_samples=8, precision="bf16")
    assert 8 <= stopped.nt_samples < 64 and 0 < stopped.relative_error <= 0.5
    assert stopped.options.tolerance == 0.5
    assert qmc.options.noise_sampling == pb.NOISE_SAMPLING_QMC
    assert not torch.equal(attribution(qmc), attribution(iid))
    assert low.options.precision == pb.PRECISION_BF16
    close = float((attribution(low) - attribution(iid)).norm() / attribution(iid).norm())
    assert 0 < close < 0.1  # autocast ran; the map stays near fp32's


def test_predict_has_no_attribution(servers: Servers) -> None:
    with servers.client("rest") as client:
        response = client.predict(MODEL, _png(), top_k=4)
    assert len(response.top_k) == 4 and not response.HasField("attribution")
    with pytest.raises(InvalidArgument):
        attribution(response)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("options", "field"),
    [({"nt_samples": 1000}, "options.nt_samples"), ({"target": 99}, "target")],
)
def test_a_bad_request_raises_invalid_argument(
    servers: Servers, transport: Transport, options: dict[str, Any], field: str
) -> None:
    with servers.client(transport) as client, pytest.raises(ExplainError) as caught:
        client.explain(MODEL, torch.randn(3, 8, 8), seed=1, **options)
    error = caught.value
    assert isinstance(error, grpc.RpcError)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error.field == field and field in error.details() and error.http_status == 400


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_wrong_token_is_unauthenticated(servers: Servers, transport: Transport) -> None:
    wrong = "wrong-token-do-not-print"
    with servers.client(transport, token=wrong) as client, pytest.raises(grpc.RpcError) as caught:
        client.predict(MODEL, _png())
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert wrong not in str(caught.value) and wrong not in (caught.value.details() or "")


def test_torchserve_errors_over_rest(servers: Servers) -> None:
    with servers.client("rest") as client, pytest.raises(ExplainError) as caught:
        client.predict("no-such-model", _png())
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND and caught.value.http_status == 404
    assert "Model not found" in caught.value.details()


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, grpc.StatusCode.INVALID_ARGUMENT),
        (401, grpc.StatusCode.UNAUTHENTICATED),
        (403, grpc.StatusCode.PERMISSION_DENIED),
        (404, grpc.StatusCode.NOT_FOUND),
        (413, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (429, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (503, grpc.StatusCode.UNAVAILABLE),
        (504, grpc.StatusCode.DEADLINE_EXCEEDED),
        (500, grpc.StatusCode.INTERNAL),
        (418, grpc.StatusCode.INTERNAL),
    ],
)
def test_http_status_to_grpc_code(status: int, code: grpc.StatusCode) -> None:
    assert status_for_http(status) is code


def test_every_error_of_the_table_round_trips_between_transports() -> None:
    """The clients' translation is errors.py's table: each of our errors' gRPC code maps back
    to an HTTP status of its class (415 and 400 share INVALID_ARGUMENT), and its HTTP status to
    its code (a bare 503 reads UNAVAILABLE, as TorchServe answers it; RESOURCE_EXHAUSTED comes
    with our Response.error)."""
    from smoothexplain import errors

    kinds = [getattr(errors, name) for name in errors.__all__]
    for kind in kinds:
        if isinstance(kind, type) and issubclass(kind, errors.SmoothExplainError):
            status = errors.status_of(kind("x"))
            back = errors.http_of_grpc_code(status.grpc)
            assert back // 100 == status.http // 100, kind
            assert _http_for(grpc.StatusCode[status.grpc]) == back, kind
            assert status_for_http(status.http).name in (status.grpc, "UNAVAILABLE"), kind


def test_unreachable_server_is_unavailable(servers: Servers) -> None:
    client = SmoothExplainClient(transport="rest", rest_port=1, timeout=5)
    with client, pytest.raises(ExplainError) as caught:
        client.predict(MODEL, _png())
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"method": "smoothgrad"}, "options.method"),
        ({"nt_type": "SMOOTHGRAD"}, "options.nt_type"),
        ({"noise": "uniform"}, "options.noise"),
        ({"ig_rule": "simpson"}, "options.ig_rule"),
        ({"encoding": "jpeg"}, "options.encoding"),
        ({"noise_sampling": "sobol"}, "options.noise_sampling"),
        ({"precision": "fp8"}, "options.precision"),
        ({"tolerance": "small"}, "options.tolerance"),
        ({"nt_samples": -1}, "options.nt_samples"),
        ({"target": "cat"}, "target"),
    ],
)
def test_bad_arguments_fail_before_any_network_call(
    servers: Servers, options: dict[str, Any], field: str
) -> None:
    before = servers.backend.calls
    for transport in TRANSPORTS:
        with servers.client(transport) as client, pytest.raises(InvalidArgument) as caught:
            client.explain(MODEL, torch.randn(3, 8, 8), **options)
        assert caught.value.field == field
    assert servers.backend.calls == before


# -- tokens -----------------------------------------------------------------------------------


def test_token_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    named = _key_file(tmp_path / "named.json", "from-named-file")
    from_env = _key_file(tmp_path / "env.json", "from-env-file")
    env = {TOKEN_ENV: "from-env", KEY_FILE_ENV: str(from_env)}
    assert resolve_token("from-arg", named, env) == "from-arg"
    assert resolve_token(None, named, env) == "from-env"
    assert resolve_token(None, named, {KEY_FILE_ENV: str(from_env)}) == "from-named-file"
    assert resolve_token(None, None, {KEY_FILE_ENV: str(from_env)}) == "from-env-file"
    monkeypatch.chdir(tmp_path)
    nothing = {STATE_DIR_ENV: str(tmp_path / "no-state")}  # and no local server record
    assert resolve_token(None, None, nothing) is None  # no ./key_file.json
    _key_file(tmp_path / "key_file.json", "from-cwd")
    assert resolve_token(None, None, {}) == "from-cwd"


def test_key_file_errors_name_the_field(tmp_path: Path) -> None:
    broken = tmp_path / "key_file.json"
    broken.write_text('{"inference": {"expiration time": "x"}, "secret": "abc123"}')
    for path in (broken, tmp_path / "missing.json"):
        with pytest.raises(InvalidArgument) as caught:
            resolve_token(None, path, {})
        assert caught.value.field == "token_file" and "abc123" not in str(caught.value)


def test_the_client_resolves_and_refreshes_tokens(
    servers: Servers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = _key_file(tmp_path / "keys.json", TOKEN)
    monkeypatch.setenv(TOKEN_ENV, "stale")
    client = servers.client("grpc", token=None, token_file=keys)
    with client, pytest.raises(grpc.RpcError):  # env beats the key file
        client.predict(MODEL, _png())
    with servers.client("grpc", token=TOKEN) as client:  # the argument beats env
        assert client.predict(MODEL, _png()).top_k
    monkeypatch.delenv(TOKEN_ENV)
    _key_file(keys, "expired")
    with servers.client("rest", token=None, token_file=keys) as client:
        with pytest.raises(ExplainError):
            client.predict(MODEL, _png())
        _key_file(keys, TOKEN + " ")  # TorchServe rotated the key (size changes too)
        _key_file(keys, TOKEN)
        assert client.predict(MODEL, _png()).top_k
        assert TOKEN not in repr(client)


# -- CLI --------------------------------------------------------------------------------------


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    path = tmp_path / "in.png"
    path.write_bytes(_png())
    return path


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_cli_explain_writes_files(
    servers: Servers,
    transport: Transport,
    image_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    heat, overlay, npy = tmp_path / "heat.png", tmp_path / "over.png", tmp_path / "attr.npy"
    argv = ["explain", str(image_file), *servers.argv(transport), "--seed", "5"]
    argv += ["--nt-samples", "4", "--out", str(heat), "--overlay", str(overlay)]
    argv += ["--save-attributions", str(npy)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "top class" in out and "seed 5" in out and "4 noise samples" in out
    assert str(heat) in out and str(npy) in out
    for png in (heat, overlay):
        with Image.open(png) as picture:
            assert picture.format == "PNG" and picture.size == (8, 8)
    saved = np.load(npy)
    assert saved.shape == (3, 8, 8) and saved.dtype == np.float32
    with servers.client(transport) as client:
        expected = attribution(client.explain(MODEL, image_file.read_bytes(), seed=5))
    np.testing.assert_array_equal(saved, expected.numpy())


def test_cli_json_output(
    servers: Servers,
    image_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    keys = _key_file(tmp_path / "keys.json", TOKEN)
    argv = ["explain", str(image_file), *servers.argv("rest"), "--token-file", str(keys)]
    assert main([*argv, "--seed", "2", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    # proto3 JSON writes 64-bit integers as strings (this protobuf does not for repeated ones)
    assert int(body["seed"]) == 2 and [int(n) for n in body["attribution"]["shape"]] == [3, 8, 8]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_cli_bad_request_exits_2_naming_the_field(
    servers: Servers,
    transport: Transport,
    image_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    argv = ["explain", str(image_file), *servers.argv(transport), "--nt-samples", "1000"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and "(field: options.nt_samples)" in captured.err
    assert "Traceback" not in captured.err and not captured.out


def test_cli_other_failures_exit_1_or_2(
    servers: Servers,
    image_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(TOKEN_ENV, "wrong")
    assert main(["predict", str(image_file), *servers.argv("grpc")]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    missing = str(tmp_path / "nope.png")
    assert main(["predict", missing, *servers.argv("rest")]) == 2
    assert "(field: IMAGE)" in capsys.readouterr().err


def test_cli_predict_prints_the_top_class(
    servers: Servers,
    image_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    assert main(["predict", str(image_file), *servers.argv("grpc"), "--top-k", "2"]) == 0
    out = capsys.readouterr().out
    with servers.client("grpc") as client:
        top = client.predict(MODEL, image_file.read_bytes()).top_k[0]
    assert out.startswith(f'model {MODEL}: top class {top.index} "{top.label}"')
    assert len(out.strip().splitlines()) == 3


def test_cli_choices_come_from_the_spec_enums() -> None:
    parser = build_parser()
    args = parser.parse_args(["explain", "x.png", "--model", "m", "--method", "guided_backprop"])
    assert args.method == Method.GUIDED_BACKPROP
    extra = ["--noise-sampling", "antithetic", "--precision", "bf16", "--tolerance", "0.2"]
    args = parser.parse_args(["explain", "x.png", "--model", "m", *extra])
    assert (args.noise_sampling, args.precision, args.tolerance) == ("antithetic", "bf16", 0.2)
    with pytest.raises(SystemExit):
        parser.parse_args(["explain", "x.png", "--model", "m", "--precision", "fp8"])
    with pytest.raises(SystemExit) as caught:
        parser.parse_args(["explain", "x.png", "--model", "m", "--method", "occlusion"])
    assert caught.value.code == 2


def test_explain_error_redacts_the_token() -> None:
    error = ExplainError(grpc.StatusCode.INTERNAL, f"server echoed Bearer {TOKEN}", field="x")
    error.redact(TOKEN)
    assert TOKEN not in str(error) and TOKEN not in error.details() and TOKEN not in repr(error)
    assert error.field == "x" and error.code() is grpc.StatusCode.INTERNAL


def test_the_overlay_is_cut_as_the_response_says_the_server_cut_it(tmp_path: Path) -> None:
    """A 256/224 model crops 87.5 % of the short side: the overlay must show that part."""
    import argparse
    import io

    from PIL import Image

    from smoothexplain import cli
    from smoothexplain.protocol.heatmap import overlay_png
    from smoothexplain.serving.codec import tensor_to_message

    gradient = np.tile(np.arange(300, dtype=np.uint8)[None, :, None], (200, 1, 3))
    buffer = io.BytesIO()
    Image.fromarray(gradient).save(buffer, format="PNG")
    photo = buffer.getvalue()
    heat = torch.zeros(3, 224, 224)
    response = pb.Response(attribution=tensor_to_message(heat))
    response.crop.resize, response.crop.size = 256, 224
    args = argparse.Namespace(out=None, overlay=tmp_path / "o.png", save_attributions=None)
    cli._write_outputs(args, response, photo)
    written = np.asarray(Image.open(tmp_path / "o.png"))
    expected = overlay_png(heat, cli._image_like(photo, heat, (256, 224)))
    assert np.array_equal(written, np.asarray(Image.open(io.BytesIO(expected))))
    # resize 256 makes the 300-wide photo 384 wide; the 224 crop starts at column 80 of it,
    # i.e. photo column ~62 — not the centre square's column 50
    assert 55 <= int(written[112, 0, 0]) <= 70
