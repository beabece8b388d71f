"""Model archives for the serving benchmark, built into a scratch model store.

- `se_resnet18`: ResNet-18 (random weights, seed 0) behind our handler, ImageNet preprocessing
  (resize 256, crop 224), as any user would archive a torchvision classifier;
- `ts_resnet18`: the same weights behind TorchServe's stock `image_classifier` handler (same
  preprocessing; its `/explanations` runs Captum IntegratedGradients, n_steps 15);
- `shapes`: the demo model with its shipped model-config (trained by `make model`);
- `se_lite0`: the pretrained EfficientNet-Lite0 behind our handler (its model class is
  `smoothexplain.demo.efficientnet:EfficientNetLite` with keyword arguments, the package's
  `.pth` copied into the archive, ImageNet labels, resize 256, crop 224, ImageNet mean/std);
- `ts_lite0`: the same `.pth` behind the stock `image_classifier` handler (`--model-file`
  `ts_lite0.py`, the same `index_to_name.json`).

Every archive has batchSize 1: requests are sent one at a time, so no batch delay is paid.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
import yaml
from lite0 import LITE0, MEAN, STD, VARIANT, categories
from tv_resnet18 import ResNet18

from smoothexplain.demo.efficientnet import pretrained_weights

REPO = Path(__file__).resolve().parent.parent
MODEL_FILE = Path(__file__).resolve().parent / "tv_resnet18.py"
LITE0_MODEL_FILE = Path(__file__).resolve().parent / "ts_lite0.py"
HANDLER = REPO / "handler" / "smoothexplain" / "serving" / "ts_entry.py"
TEMPLATE = REPO / "deploy" / "model-config.yaml"
TORCHSERVE_KEYS = {
    "minWorkers": 1,
    "maxWorkers": 1,
    "batchSize": 1,
    "maxBatchDelay": 1,
    "responseTimeout": 300,
}
ROWS = 25  # nt_samples_batch_size of the 224² models: SmoothGrad 50 = 2 passes, IG 15 = 1
# Archives per model choice: ours first, then the stock handler's of the same weights.
ARCHIVES = {
    "resnet18": ("se_resnet18", "ts_resnet18"),
    "shapes": ("shapes",),
    LITE0: ("se_lite0", "ts_lite0"),
}
LABELS = "index_to_name.json"


def resnet_config(defaults: dict[str, Any]) -> dict[str, Any]:
    """Our model-config for the ResNet-18 archive (ImageNet preprocessing is the default)."""
    return {
        **TORCHSERVE_KEYS,
        "smoothexplain": {
            "format": "eager",
            "model_class": "tv_resnet18:ResNet18",
            "weights": "weights.pt",
            "nt_samples_batch_size": ROWS,
            "tune_pass_rows": False,  # the same model calls as explain() in the client
            "defaults": defaults,
        },
    }


def lite0_config(defaults: dict[str, Any], weights: str) -> dict[str, Any]:
    """Our model-config for the EfficientNet-Lite0 archive, every preprocessing value spelt out."""
    return {
        **TORCHSERVE_KEYS,
        "smoothexplain": {
            "format": "eager",
            "model_class": "smoothexplain.demo.efficientnet:EfficientNetLite",
            "model_kwargs": {"variant": VARIANT, "num_classes": 1000},
            "weights": weights,
            "labels": LABELS,
            "nt_samples_batch_size": ROWS,
            "tune_pass_rows": False,
            "preprocess": {"size": 224, "resize": 256, "mean": list(MEAN), "std": list(STD)},
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


def build(
    store: Path,
    scratch: Path,
    defaults: dict[str, Any],
    artifacts: Path,
    models: Collection[str] = tuple(ARCHIVES),
) -> dict[str, Path]:
    """The archives of `models` (keys of ARCHIVES) in `store`; returns each served network's
    weights file (for the same network in the benchmark's process)."""
    store.mkdir(parents=True, exist_ok=True)
    scratch.mkdir(parents=True, exist_ok=True)
    weights = {}
    if "resnet18" in models:
        weights["resnet18"] = _resnet18(store, scratch, defaults)
    if LITE0 in models:
        weights[LITE0] = _lite0(store, scratch, defaults)
    if "shapes" in models:
        _shapes(store, scratch, artifacts)
    return weights


def _resnet18(store: Path, scratch: Path, defaults: dict[str, Any]) -> Path:
    torch.manual_seed(0)
    weights = scratch / "weights.pt"
    torch.save(ResNet18().state_dict(), weights)
    ours = scratch / "se-config.yaml"
    ours.write_text(yaml.safe_dump(resnet_config(defaults)))
    _ours("se_resnet18", store, ours, weights, MODEL_FILE)
    _stock("ts_resnet18", store, scratch, MODEL_FILE, weights)
    return weights


def _lite0(store: Path, scratch: Path, defaults: dict[str, Any]) -> Path:
    weights = pretrained_weights(VARIANT)  # the archiver copies it in, name and all
    labels = scratch / LABELS
    labels.write_text(json.dumps({str(i): name for i, name in enumerate(categories())}))
    ours = scratch / "se-lite0-config.yaml"
    ours.write_text(yaml.safe_dump(lite0_config(defaults, weights.name)))
    _ours("se_lite0", store, ours, weights, labels)
    _stock("ts_lite0", store, scratch, LITE0_MODEL_FILE, weights, labels)
    return weights


def _ours(name: str, store: Path, config: Path, *extra: Path) -> None:
    files = ",".join(str(p) for p in extra)
    _archive(
        name,
        store,
        *("--handler", str(HANDLER), "--extra-files", files, "--config-file", str(config)),
    )


def _stock(
    name: str, store: Path, scratch: Path, model_file: Path, weights: Path, *extra: Path
) -> None:
    config = scratch / "ts-config.yaml"
    config.write_text(yaml.safe_dump(TORCHSERVE_KEYS))
    files = ("--extra-files", ",".join(str(p) for p in extra)) if extra else ()
    _archive(
        name,
        store,
        *("--handler", "image_classifier", "--model-file", str(model_file)),
        *("--serialized-file", str(weights), *files, "--config-file", str(config)),
    )


def _shapes(store: Path, scratch: Path, artifacts: Path) -> None:
    from smoothexplain.demo.archive import build_archives

    template = yaml.safe_load(TEMPLATE.read_text())
    template.update(TORCHSERVE_KEYS)
    # Serving overhead is measured against explain() doing the same model calls: no pass tuning.
    template["smoothexplain"]["tune_pass_rows"] = False
    patched = scratch / "shapes-template.yaml"
    patched.write_text(yaml.safe_dump(template))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_archives(artifacts, store, patched, HANDLER, ["shapes"])
