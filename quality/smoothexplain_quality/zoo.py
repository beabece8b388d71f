"""The models the quality report compares, trained once, deterministically, and cached.

`demo` is the served model (artifacts/demo, trained by `make model`). The others are trained
here with the demo's own training loop, so that only the named difference varies:

- `resnet`: the second architecture (:class:`ShapesResNet`), same data, noise and schedule;
- `nonoise`: the demo network trained without input-noise augmentation;
- `randlabels`: the demo network trained on permuted labels (Adebayo et al.'s data
  randomisation test), on a smaller set since it only has to exist, not to generalise.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final

import torch
from torch import nn

from smoothexplain.demo import (
    META_FILE,
    NUM_CLASSES,
    ShapesDataset,
    ShapesNet,
    load_model,
    make_dataset,
)
from smoothexplain.demo.train import (
    HELDOUT_SEED_OFFSET,
    TrainConfig,
    _deterministic_torch,
    _fit,
    evaluate,
    state_dict_sha256,
)

from .resnet import ShapesResNet

__all__ = ["VARIANTS", "Variant", "load_variant"]

_WEIGHTS: Final[str] = "weights.pt"
_META: Final[str] = "meta.json"


@dataclass(frozen=True)
class Variant:
    """One trained model: architecture plus the training changes that define it."""

    name: str
    label: str
    architecture: str = "shapesnet"
    config: TrainConfig = field(default_factory=TrainConfig)
    shuffle_labels: bool = False


VARIANTS: Final[dict[str, Variant]] = {
    "demo": Variant("demo", "ShapesNet (VGG-style, the served demo model)"),
    "resnet": Variant("resnet", "ShapesResNet (ResNet-style)", architecture="resnet"),
    "nonoise": Variant(
        "nonoise", "ShapesNet without noise augmentation", config=TrainConfig(noise_max=0.0)
    ),
    "randlabels": Variant(
        "randlabels",
        "ShapesNet on permuted labels",
        config=TrainConfig(train_count=4_000, epochs=6),
        shuffle_labels=True,
    ),
}

_ARCHITECTURES: Final[dict[str, Callable[[int, int], nn.Module]]] = {
    "shapesnet": lambda classes, width: ShapesNet(classes, width=width),
    "resnet": lambda classes, width: ShapesResNet(classes, width=width),
}


def _permuted(data: ShapesDataset, seed: int) -> ShapesDataset:
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed + 1))
    return ShapesDataset(data.images, data.labels[order], data.masks)


def _train(variant: Variant, out_dir: Path, seed: int) -> dict[str, object]:
    cfg = variant.config
    start, cpu_start = time.perf_counter(), time.process_time()
    with _deterministic_torch(seed, cfg.threads):
        data = make_dataset(cfg.train_count, seed, cfg.image_size)
        if variant.shuffle_labels:
            data = _permuted(data, seed)
        heldout = make_dataset(cfg.heldout_count, seed + HELDOUT_SEED_OFFSET, cfg.image_size)
        model = _ARCHITECTURES[variant.architecture](NUM_CLASSES, cfg.width)
        generator = torch.Generator().manual_seed(seed)
        model.to(memory_format=torch.channels_last)  # faster CPU convolutions, as the demo does
        loss = _fit(model, data, cfg, generator)
        model.to(memory_format=torch.contiguous_format)
        accuracy, _ = evaluate(model, heldout)
        # For permuted labels this says whether the network memorised them (Adebayo et al.
        # train theirs to fit the random labels).
        train_accuracy, _ = evaluate(model, data)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out_dir / _WEIGHTS)
    meta: dict[str, object] = {
        "variant": variant.name,
        "architecture": variant.architecture,
        "shuffle_labels": variant.shuffle_labels,
        "config": asdict(cfg),
        "seed": seed,
        "heldout_accuracy": accuracy,
        "train_accuracy": train_accuracy,
        "final_train_loss": loss,
        "train_seconds": round(time.perf_counter() - start, 1),
        # CPU time says more than wall time on a shared machine (both threads counted).
        "train_cpu_seconds": round(time.process_time() - cpu_start, 1),
        "state_dict_sha256": state_dict_sha256(model),
        "torch_version": torch.__version__,
    }
    (out_dir / _META).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def load_variant(
    variant: Variant, root: Path, demo_dir: Path, seed: int = 0
) -> tuple[nn.Module, dict[str, object]]:
    """The eval-mode model of `variant` and its training metadata; trains it if missing.

    The `demo` variant is the served model in `demo_dir` (`make model` trains it); the others
    are cached in `root / variant.name`.
    """
    if variant.name == "demo":
        meta = json.loads((demo_dir / META_FILE).read_text())
        return load_model(demo_dir), dict(meta)
    out_dir = root / variant.name
    if not (out_dir / _WEIGHTS).is_file():
        _train(variant, out_dir, seed)
    meta = json.loads((out_dir / _META).read_text())
    model = _ARCHITECTURES[variant.architecture](NUM_CLASSES, variant.config.width)
    model.load_state_dict(torch.load(out_dir / _WEIGHTS, map_location="cpu", weights_only=True))
    return model.eval(), dict(meta)
