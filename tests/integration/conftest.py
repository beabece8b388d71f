"""Fixtures shared by the integration modules: the trained demo model and archive building."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import yaml

from smoothexplain.ops.launcher import TorchServeInstance

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "artifacts" / "demo"
TEMPLATE = REPO_ROOT / "deploy" / "model-config.yaml"
HANDLER = REPO_ROOT / "handler" / "smoothexplain" / "serving" / "ts_entry.py"


@pytest.fixture(scope="session")
def demo_artifacts() -> Path:
    """The demo model's weights (trained here once when `make model` has not run)."""
    from smoothexplain.demo.train import train

    if not (ARTIFACTS / "weights.pt").is_file():
        train(ARTIFACTS)
    return ARTIFACTS


def build_store(store: Path, names: list[str], artifacts: Path, **torchserve_keys: object) -> Path:
    """Archives `names` into `store`, with TorchServe model-config keys overridden."""
    from smoothexplain.demo.archive import build_archives

    template = yaml.safe_load(TEMPLATE.read_text())
    template.update(torchserve_keys)
    store.mkdir(parents=True, exist_ok=True)
    patched = store / "model-config.template.yaml"
    patched.write_text(yaml.safe_dump(template))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy ONNX exporter's deprecation notice
        build_archives(artifacts, store, patched, HANDLER, names)
    return store


def shapes_server(
    root: Path, artifacts: Path, env: dict[str, str] | None = None, **torchserve_keys: object
) -> TorchServeInstance:
    """A TorchServe (not started; use it with `with`) serving the demo archive built under root."""
    store = build_store(root / "store", ["shapes"], artifacts, **torchserve_keys)
    return TorchServeInstance(store, {"shapes": "shapes.mar"}, root / "ts", env=env)
