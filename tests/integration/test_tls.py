"""`smoothexplain serve --tls-cert/--tls-key`: HTTPS and gRPC over TLS, probes and token rotation.

The certificate is generated here (self-signed, for 127.0.0.1 and localhost) with `cryptography`.
Token authorization stays on: the probes must not need the key, and rotating the key must not
break them.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import grpc
import pytest
import requests
from conftest import build_store
from serveproc import ServeProcess
from tlscert import self_signed

from smoothexplain._proto.smoothexplain.v1 import explain_pb2 as pb
from smoothexplain._proto.torchserve import inference_pb2 as ts
from smoothexplain._proto.torchserve import inference_pb2_grpc as ts_grpc
from smoothexplain.client import SmoothExplainClient, attribution
from smoothexplain.client.cli import main as cli_main
from smoothexplain.demo import render_sample
from smoothexplain.serving.codec import GRPC_KEY

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def serve(
    tmp_path_factory: pytest.TempPathFactory, demo_artifacts: Path, tls: tuple[Path, Path]
) -> Iterator[ServeProcess]:
    root = tmp_path_factory.mktemp("tlsserve")
    store = build_store(root / "store", ["shapes"], demo_artifacts)
    cert, key = tls
    tls_flags = ["--tls-cert", str(cert), "--tls-key", str(key)]
    with ServeProcess(root / "srv", store, ["shapes=shapes.mar"], tls_flags) as process:
        yield process


def _png() -> bytes:
    image, _ = render_sample(2, 5)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _rest_explain(serve: ServeProcess, cert: Path, token: str) -> requests.Response:
    return requests.post(
        f"{serve.endpoints['rest']}/explanations/shapes",
        data=_png(),
        headers={"Authorization": f"Bearer {token}"},
        verify=str(cert),
        timeout=120,
    )


def test_rest_is_https_only(serve: ServeProcess, tls: tuple[Path, Path]) -> None:
    cert, _ = tls
    assert serve.endpoints["rest"].startswith("https://") and serve.endpoints["tls"]
    answer = _rest_explain(serve, cert, serve.keys()["inference"]["key"])
    assert answer.status_code == 200 and answer.json()["attribution"]["shape"] == [3, 64, 64]
    plain = serve.endpoints["rest"].replace("https://", "http://")
    refused = requests.post(
        f"{plain}/explanations/shapes",
        data=_png(),
        headers={"Authorization": f"Bearer {serve.keys()['inference']['key']}"},
        timeout=30,
    )
    assert refused.status_code == 403 and "only accepts HTTPS" in refused.text  # TorchServe's
    with pytest.raises(requests.exceptions.SSLError):  # a client that does not trust the cert
        requests.get(f"{serve.endpoints['rest']}/ping", timeout=10)


def _grpc_explain(channel: grpc.Channel, token: str) -> pb.Response:
    request = pb.Request(
        input=pb.Input(image=_png()), explain=True, options=pb.ExplainOptions(nt_samples=4, seed=1)
    )
    reply = ts_grpc.InferenceAPIsServiceStub(channel).Predictions(
        ts.PredictionsRequest(model_name="shapes", input={GRPC_KEY: request.SerializeToString()}),
        metadata=(("authorization", f"Bearer {token}"),),
        timeout=60,
    )
    return pb.Response.FromString(reply.prediction)


def test_grpc_is_tls_only(serve: ServeProcess, tls: tuple[Path, Path]) -> None:
    cert, _ = tls
    token = serve.keys()["inference"]["key"]
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    with grpc.secure_channel(serve.endpoints["grpc"], credentials) as channel:
        response = _grpc_explain(channel, token)
    assert not response.HasField("error") and response.rows == 4
    with grpc.insecure_channel(serve.endpoints["grpc"]) as channel, pytest.raises(grpc.RpcError):
        _grpc_explain(channel, token)


def test_exporter_and_probes_use_tls_and_need_no_token(
    serve: ServeProcess, tls: tuple[Path, Path]
) -> None:
    cert, _ = tls
    assert serve.endpoints["metrics"].startswith("https://")
    metrics = requests.get(serve.endpoints["metrics"], verify=str(cert), timeout=10)
    assert metrics.status_code == 200 and "smoothexplain_torchserve_up 1.0" in metrics.text
    for probe in ("health", "ready"):
        answer = requests.get(serve.endpoints[probe], verify=str(cert), timeout=10)
        assert answer.status_code == 200, probe


def test_rotating_the_inference_key(serve: ServeProcess, tls: tuple[Path, Path]) -> None:
    """TorchServe's token API: the old key stops working at once, the probes go on."""
    cert, _ = tls
    old = serve.keys()["inference"]["key"]
    management = f"http://127.0.0.1:{serve.ports['management']}"
    rotated = requests.post(
        f"{management}/token?type=inference",
        headers={"Authorization": f"Bearer {serve.keys()['API']['key']}"},
        timeout=10,
    )
    assert rotated.status_code == 200, rotated.text
    new = serve.keys()["inference"]["key"]
    assert new != old
    assert _rest_explain(serve, cert, old).status_code == 400  # InvalidKeyException
    assert _rest_explain(serve, cert, new).status_code == 200
    ready = requests.get(serve.endpoints["ready"], verify=str(cert), timeout=10)
    assert ready.status_code == 200


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_the_typed_client_speaks_tls_and_verifies_the_certificate(
    serve: ServeProcess, tls: tuple[Path, Path], transport: Literal["grpc", "rest"]
) -> None:
    cert, _ = tls
    rest, grpc_port = serve.ports["inference"], serve.ports["grpc-inference"]
    ports: dict[str, Any] = {"host": "127.0.0.1", "rest_port": rest, "grpc_port": grpc_port}
    token = serve.keys()["inference"]["key"]
    with SmoothExplainClient(
        transport=transport, token=token, tls=True, root_certificates=cert, **ports
    ) as client:
        answer = client.explain("shapes", _png(), nt_samples=4, seed=3)
    assert answer.options.seed == 3 and tuple(attribution(answer).shape) == (3, 64, 64)
    with (
        SmoothExplainClient(transport=transport, token=token, tls=True, **ports) as untrusting,
        pytest.raises(grpc.RpcError) as refused,
    ):
        untrusting.explain("shapes", _png(), nt_samples=4)  # self-signed: not in system roots
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_cli_takes_tls_flags(
    serve: ServeProcess, tls: tuple[Path, Path], tmp_path: Path
) -> None:
    cert, _ = tls
    image = tmp_path / "in.png"
    image.write_bytes(_png())
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps({"inference": {"key": serve.keys()["inference"]["key"]}}))
    code = cli_main(
        [
            "explain", str(image), "--model", "shapes", "--transport", "rest",
            "--host", "127.0.0.1", "--rest-port", str(serve.ports["inference"]),
            "--grpc-port", str(serve.ports["grpc-inference"]), "--token-file", str(key_file),
            "--tls-ca", str(cert), "--nt-samples", "4",
        ]
    )  # fmt: skip
    assert code == 0
    with pytest.raises(SystemExit) as missing:
        cli_main(["explain", str(image), "--model", "shapes", "--tls-ca"])
    assert missing.value.code == 2
