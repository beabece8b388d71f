"""Model archives for the serving benchmark, built into a scratch model store.

- `se_resnet18`: ResNet-18 (random weights, seed 0) behind our handler, ImageNet preprocessing
  (resize 256, crop 224), as any user would archive a torchvision classifier;
- `ts_resnet18`: the same weights behind TorchServe's stock `image_classifier` handler (same
  preprocessing; its `/explanations` runs Captum IntegratedGradients, n_steps 15);
- `shapes`: the demo model with its shipped model-config (trained by `make model`).

Every archive has batchSize 1: requests are sent one at a time, so no batch delay is paid.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml
from tv_resnet18 import ResNet18

REPO = Path(__file__).resolve().parent.parent
MODEL_FILE = Path(__file__).resolve().parent / "tv_resnet18.py"
HANDLER = REPO / "handler" / "smoothexplain" / "ts_entry.py"
TEMPLATE = REPO / "deploy" / "model-config.yaml"
TORCHSERVE_KEYS = {
    "minWorkers": 1,
    "maxWorkers": 1,
    "batchSize": 1,
    "maxBatchDelay": 1,
    "responseTimeout": 300,
}
RESNET_ROWS = 25  # nt_samples_batch_size: SmoothGrad 50 = 2 passes, IG 15 steps = 1 pass


def resnet_config(defaults: dict[str, Any]) -> dict[str, Any]:
    """Our model-config for the ResNet-18 archive (ImageNet preprocessing is the default)."""
    return {
        **TORCHSERVE_KEYS,
        "smoothexplain": {
            "format": "eager",
            "model_class": "tv_resnet18:ResNet18",
            "weights": "weights.pt",
            "nt_samples_batch_size": RESNET_ROWS,
            "tune_pass_rows": False,  # the same model calls as explain() in the client
            "defaults": defaults,
        },
    }


def _archiver() -> str:
    return shutil.which("torch-model-archiver", path=str(Path(sys.executable).parent)) or (
        "torch-model-archiver"
    )


def _archive(name: str, store: Path, *args: str) -> None:
    command = [_archiver(), "--model-name", name, "--version", "1.0", "--export-path", str(store)]
    subprocess.run([*command, *args, "--force"], check=True)


def build(store: Path, scratch: Path, defaults: dict[str, Any], artifacts: Path) -> Path:
    """All three archives in `store`; returns the ResNet-18 weights file (for the local engine)."""
    from smoothexplain.demo.archive import build_archives

    store.mkdir(parents=True, exist_ok=True)
    scratch.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    weights = scratch / "weights.pt"
    torch.save(ResNet18().state_dict(), weights)
    ours = scratch / "se-config.yaml"
    ours.write_text(yaml.safe_dump(resnet_config(defaults)))
    extra = f"{weights},{MODEL_FILE}"
    _archive(
        "se_resnet18",
        store,
        "--handler",
        str(HANDLER),
        "--extra-files",
        extra,
        "--config-file",
        str(ours),
    )
    stock = scratch / "ts-config.yaml"
    stock.write_text(yaml.safe_dump(TORCHSERVE_KEYS))
    _archive(
        "ts_resnet18",
        store,
        "--handler",
        "image_classifier",
        "--model-file",
        str(MODEL_FILE),
        "--serialized-file",
        str(weights),
        "--config-file",
        str(stock),
    )
    template = yaml.safe_load(TEMPLATE.read_text())
    template.update(TORCHSERVE_KEYS)
    # Serving overhead is measured against explain() doing the same model calls: no pass tuning.
    template["smoothexplain"]["tune_pass_rows"] = False
    patched = scratch / "shapes-template.yaml"
    patched.write_text(yaml.safe_dump(template))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_archives(artifacts, store, patched, HANDLER, ["shapes"])
    return weights
