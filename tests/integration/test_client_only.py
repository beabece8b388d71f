"""A production app's install: `pip install 'smoothexplain[client]'` in a venv without torch
explains an image against a running server over gRPC and REST (issue 13).

The venv is built once per module from this checkout (a wheel, not an editable install), so
the test also checks that the package data (generated wire format, TorchServe config) ships.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO_ROOT, shapes_server

from smoothexplain.ops.launcher import TorchServeInstance

pytestmark = pytest.mark.integration

# Runs inside the client venv: explain one PNG over both transports, report what it saw.
SCRIPT = """
import io, json, sys
import numpy as np
from PIL import Image
from smoothexplain.client import SmoothExplainClient, attribution
rest_port, grpc_port, token = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
buffer = io.BytesIO()
Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(buffer, format="PNG")
seen = {}
for transport in ("grpc", "rest"):
    with SmoothExplainClient(
        transport=transport, rest_port=rest_port, grpc_port=grpc_port, token=token
    ) as client:
        response = client.explain("shapes", buffer.getvalue(), nt_samples=4, seed=7)
        a = attribution(response)
        seen[transport] = {
            "type": type(a).__module__ + "." + type(a).__name__,
            "shape": list(a.shape),
            "sum": float(np.abs(a).sum()),
            "seed": response.options.seed,
        }
seen["torch_loaded"] = any(m.split(".")[0] == "torch" for m in sys.modules)
print(json.dumps(seen))
"""


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("client-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "install", "-c", str(REPO_ROOT / "constraints.txt"), f"{REPO_ROOT}[client]"],
        check=True,
        timeout=900,
        capture_output=True,
    )
    return venv


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, demo_artifacts: Path
) -> Iterator[TorchServeInstance]:
    with shapes_server(tmp_path_factory.mktemp("client-only"), demo_artifacts) as instance:
        yield instance


def _run(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=venv,  # not the checkout: the installed package, not ./handler
    )


def test_the_client_extra_installs_without_torch(client_venv: Path) -> None:
    done = _run(client_venv, "python", "-c", "import torch")
    assert done.returncode != 0 and "No module named 'torch'" in done.stderr


def test_a_client_only_install_explains_over_grpc_and_rest(
    client_venv: Path, server: TorchServeInstance
) -> None:
    done = _run(
        client_venv,
        "python",
        "-c",
        SCRIPT,
        str(server.ports.inference),
        str(server.ports.grpc_inference),
        server.inference_token,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["torch_loaded"] is False
    for transport in ("grpc", "rest"):
        answer = seen[transport]
        assert answer["type"] == "numpy.ndarray" and answer["shape"][0] == 3
        assert answer["sum"] > 0 and answer["seed"] == 7
    assert seen["grpc"]["sum"] == pytest.approx(seen["rest"]["sum"], rel=1e-6)


def test_the_cli_explains_and_names_the_extra_for_serve(
    client_venv: Path, server: TorchServeInstance, tmp_path: Path
) -> None:
    from PIL import Image

    image, heatmap = tmp_path / "in.png", tmp_path / "heat.png"
    Image.new("RGB", (48, 48), (10, 200, 30)).save(image)
    token = tmp_path / "key_file.json"
    token.write_text(json.dumps({"inference": {"key": server.inference_token}}))
    done = _run(
        client_venv,
        "smoothexplain",
        "explain",
        str(image),
        "--model",
        "shapes",
        "--rest-port",
        str(server.ports.inference),
        "--grpc-port",
        str(server.ports.grpc_inference),
        "--token-file",
        str(token),
        "--nt-samples",
        "4",
        "--out",
        str(heatmap),
    )
    assert done.returncode == 0, done.stderr
    assert heatmap.read_bytes().startswith(b"\x89PNG")
    for command in ("serve", "archive"):
        refused = _run(client_venv, "smoothexplain", command, "--help")
        assert refused.returncode == 2
        assert "pip install 'smoothexplain[serve]'" in refused.stderr
