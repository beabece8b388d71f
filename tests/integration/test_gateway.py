"""The Kubernetes pod on loopback: deploy/k8s's nginx gateway before `serve --no-token-auth`.

nginx (Debian's, installed when missing) runs deploy/k8s/gateway/default.conf.template rendered
as the nginx image renders it (envsubst of ${SMOOTHEXPLAIN_TOKEN}); only its ports, upstream
ports and certificate paths are moved to this test's. TorchServe behind it has no token check
of its own, as in the pod; the gateway's shared token is the only way in.
"""

from __future__ import annotations

import io
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import requests
from aptget import ensure
from conftest import build_store
from serveproc import ServeProcess
from tlscert import self_signed

from smoothexplain._proto.smoothexplain.v1 import explain_pb2 as pb
from smoothexplain._proto.torchserve import inference_pb2 as ts
from smoothexplain._proto.torchserve import inference_pb2_grpc as ts_grpc
from smoothexplain.demo import render_sample
from smoothexplain.ops.launcher import free_port
from smoothexplain.serving.codec import GRPC_KEY

pytestmark = pytest.mark.integration

GATEWAY = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "gateway"


@dataclass(frozen=True)
class Gateway:
    url: str
    target: str  # host:port for gRPC
    token: str
    cert: Path


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory, demo_artifacts: Path) -> Iterator[ServeProcess]:
    root = tmp_path_factory.mktemp("gw")
    store = build_store(root / "store", ["shapes"], demo_artifacts)
    with ServeProcess(root / "srv", store, ["shapes=shapes.mar"], ["--no-token-auth"]) as process:
        yield process


def _render(serve: ServeProcess, port: int, token: str, cert: Path, key: Path) -> str:
    text = (GATEWAY / "default.conf.template").read_text()
    replaced = {
        "${SMOOTHEXPLAIN_TOKEN}": token,
        "listen 8443 ": f"listen 127.0.0.1:{port} ",
        "127.0.0.1:8080": f"127.0.0.1:{serve.ports['inference']}",
        "127.0.0.1:7070": f"127.0.0.1:{serve.ports['grpc-inference']}",
        "/etc/smoothexplain/tls/tls.crt": str(cert),
        "/etc/smoothexplain/tls/tls.key": str(key),
    }
    for old, new in replaced.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, serve: ServeProcess) -> Iterator[Gateway]:
    (nginx,) = ensure("nginx-light", "nginx")
    work = tmp_path_factory.mktemp("nginx")
    cert, key = self_signed(work)
    token, port = secrets.token_hex(32), free_port()
    check = subprocess.run(
        ["sh", str(GATEWAY / "15-check-token.sh")], env={"SMOOTHEXPLAIN_TOKEN": token}
    )
    assert check.returncode == 0
    (work / "gateway.conf").write_text(_render(serve, port, token, cert, key))
    temp = "".join(f"{kind}_temp_path {work / kind};\n" for kind in ("client_body", "proxy"))
    temp += "".join(f"{kind}_temp_path {work / kind};\n" for kind in ("fastcgi", "uwsgi", "scgi"))
    (work / "nginx.conf").write_text(
        f"daemon off;\nuser root;\nworker_processes 1;\npid {work / 'nginx.pid'};\n"
        f"error_log {work / 'error.log'} warn;\nevents {{}}\n"
        f"http {{\naccess_log off;\n{temp}include {work / 'gateway.conf'};\n}}\n"
    )
    conf = ["-c", str(work / "nginx.conf"), "-p", str(work)]
    tested = subprocess.run([nginx, "-t", *conf], capture_output=True, text=True)
    assert tested.returncode == 0, tested.stderr
    proc = subprocess.Popen([nginx, *conf], start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not (work / "nginx.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.3)
        yield Gateway(f"https://127.0.0.1:{port}", f"127.0.0.1:{port}", token, cert)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)


def test_the_token_check_refuses_weak_tokens() -> None:
    weak_tokens = ("", "short", "REPLACE-with-openssl-rand-hex-32-xxxxxxxx", "a b" * 20, "x" * 97)
    for weak in weak_tokens:
        env = {"SMOOTHEXPLAIN_TOKEN": weak}
        done = subprocess.run(["sh", str(GATEWAY / "15-check-token.sh")], env=env)
        assert done.returncode == 1, weak


def _png() -> bytes:
    image, _ = render_sample(6, 2)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _rest(gateway: Gateway, path: str, token: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return requests.post(
        f"{gateway.url}/{path}", data=_png(), headers=headers, verify=str(gateway.cert), timeout=120
    )


def test_rest_needs_the_shared_token(gateway: Gateway) -> None:
    answer = _rest(gateway, "explanations/shapes", gateway.token)
    assert answer.status_code == 200 and answer.json()["attribution"]["shape"] == [3, 64, 64]
    assert _rest(gateway, "predictions/shapes", gateway.token).json()["top_k"]
    assert _rest(gateway, "explanations/shapes", None).status_code == 401
    assert _rest(gateway, "explanations/shapes", gateway.token[:-1] + "x").status_code == 401
    ping = requests.get(
        f"{gateway.url}/ping",
        headers={"Authorization": f"Bearer {gateway.token}"},
        verify=str(gateway.cert),
        timeout=10,
    )
    assert ping.json() == {"status": "Healthy"}
    assert _rest(gateway, "models", gateway.token).status_code == 404  # nothing else is proxied


def _grpc(gateway: Gateway, token: str | None) -> pb.Response:
    credentials = grpc.ssl_channel_credentials(root_certificates=gateway.cert.read_bytes())
    request = pb.Request(
        input=pb.Input(image=_png()), explain=True, options=pb.ExplainOptions(nt_samples=4, seed=3)
    )
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.secure_channel(gateway.target, credentials) as channel:
        reply = ts_grpc.InferenceAPIsServiceStub(channel).Predictions(
            ts.PredictionsRequest(
                model_name="shapes", input={GRPC_KEY: request.SerializeToString()}
            ),
            metadata=metadata,
            timeout=60,
        )
    return pb.Response.FromString(reply.prediction)


def test_grpc_needs_the_shared_token(gateway: Gateway) -> None:
    response = _grpc(gateway, gateway.token)
    assert not response.HasField("error") and response.rows == 4
    with pytest.raises(grpc.RpcError) as info:
        _grpc(gateway, None)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_torchserve_has_no_key_and_listens_on_loopback_only(serve: ServeProcess) -> None:
    assert not Path(serve.endpoints["key_file"]).exists()
    direct = requests.post(f"{serve.endpoints['rest']}/predictions/shapes", data=_png(), timeout=60)
    assert direct.status_code == 200  # no token: only the pod's own containers reach it
    assert serve.endpoints["rest"].startswith("http://127.0.0.1:")
    assert requests.get(serve.endpoints["ready"], timeout=10).status_code == 200
