"""Build-time training of the demo classifier.

Usage::

    python -m smoothexplain.demo.train --out artifacts/demo

Training is deterministic for a given seed, torch build and thread count; the data sets are
regenerated from their seeds instead of being stored.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .net import INDEX_TO_NAME_FILE, META_FILE, WEIGHTS_FILE, ShapesNet
from .preprocess import MEAN, STD, input_bounds, normalize
from .shapes import CLASS_NAMES, NUM_CLASSES, ShapesDataset, make_dataset

__all__ = [
    "TrainConfig",
    "TrainReport",
    "evaluate",
    "main",
    "predict",
    "state_dict_sha256",
    "train",
]

# Added to the training seed to get the held-out seed: the data-set generator keys its streams
# by seed, so any distinct value gives an unrelated set.
HELDOUT_SEED_OFFSET = 1_000_003


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters; the defaults train in about a minute on two CPU cores."""

    train_count: int = 10_000
    heldout_count: int = 2_000
    image_size: int = 64
    epochs: int = 12
    batch_size: int = 128
    max_lr: float = 4e-3
    weight_decay: float = 1e-4
    width: int = 16
    threads: int = 2
    # Gaussian noise added to each training image, σ ~ U(0, noise_max) of the pixel range: the
    # model then sees inputs like SmoothGrad's noisy copies, so its smoothed maps stay on the
    # object (without it, σ = 0.15 maps are mostly background; docs/quality.md measures this).
    noise_max: float = 0.2


@dataclass(frozen=True)
class TrainReport:
    """What a training run produced and how well it did."""

    out_dir: Path
    heldout_accuracy: float
    per_class_accuracy: dict[str, float]
    final_train_loss: float
    data_seconds: float
    train_seconds: float
    total_seconds: float
    seed: int
    heldout_seed: int
    state_dict_sha256: str

    def summary(self) -> str:
        return (
            f"held-out accuracy {self.heldout_accuracy:.4f}, train loss "
            f"{self.final_train_loss:.4f}, {self.total_seconds:.1f} s total "
            f"({self.data_seconds:.1f} s data, {self.train_seconds:.1f} s training), "
            f"weights sha256 {self.state_dict_sha256[:16]}"
        )


@contextmanager
def _deterministic_torch(seed: int, threads: int) -> Iterator[None]:
    """Seed, pin threads and force deterministic kernels, restoring the caller's settings."""
    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(previous_deterministic)
            torch.set_num_threads(previous_threads)


def state_dict_sha256(model: nn.Module) -> str:
    """Hash of every tensor in the state dict, for comparing runs bit for bit."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(
            tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()


def _run_epoch(
    model: nn.Module,
    data: ShapesDataset,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batch_size: int,
    generator: torch.Generator,
    noise_max: float = 0.0,
) -> float:
    model.train()
    order = torch.randperm(len(data), generator=generator)
    # Dropping the ragged tail keeps every BatchNorm batch full-sized and the step count fixed.
    batches = order[: len(order) - len(order) % batch_size].view(-1, batch_size)
    total = 0.0
    for rows in batches:
        images = data.images[rows]
        if noise_max > 0:
            sigma = noise_max * torch.rand(len(rows), 1, 1, 1, generator=generator)
            images = images + sigma * torch.randn(images.shape, generator=generator)
        inputs = normalize(images).contiguous(memory_format=torch.channels_last)
        logits = model(inputs)
        loss = nn.functional.cross_entropy(logits, data.labels[rows])
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        optimizer.step()
        scheduler.step()
        total += float(loss.detach())
    return total / max(1, batches.shape[0])


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Class predictions ``(N,)`` for images in ``[0, 1]``; leaves the model in eval mode."""
    model.eval()
    chunks = [model(normalize(part)).argmax(dim=1) for part in torch.split(images, batch_size)]
    return torch.cat(chunks) if chunks else torch.zeros((0,), dtype=torch.int64)


def evaluate(model: nn.Module, data: ShapesDataset) -> tuple[float, dict[str, float]]:
    """Overall and per-class accuracy of ``model`` on ``data``."""
    correct = predict(model, data.images) == data.labels
    per_class = {
        name: float(correct[data.labels == index].double().mean())
        for index, name in enumerate(CLASS_NAMES)
        if bool((data.labels == index).any())
    }
    return float(correct.double().mean()), per_class


def _fit(
    model: nn.Module, data: ShapesDataset, config: TrainConfig, generator: torch.Generator
) -> float:
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.max_lr, weight_decay=config.weight_decay
    )
    steps_per_epoch = len(data) // config.batch_size
    # One-cycle warm-up/anneal converges reliably in few epochs without hand-tuned decay steps.
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.max_lr, total_steps=config.epochs * steps_per_epoch
    )
    loss = float("nan")
    started = time.monotonic()
    for epoch in range(config.epochs):
        loss = _run_epoch(
            model, data, optimizer, scheduler, config.batch_size, generator, config.noise_max
        )
        elapsed = time.monotonic() - started
        print(f"  epoch {epoch + 1}/{config.epochs}: loss {loss:.3f} ({elapsed:.0f} s)", flush=True)
    return loss


def _write_artifacts(out_dir: Path, model: nn.Module, meta: dict[str, object]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out_dir / WEIGHTS_FILE)
    index_to_name = {str(index): name for index, name in enumerate(CLASS_NAMES)}
    (out_dir / INDEX_TO_NAME_FILE).write_text(json.dumps(index_to_name, indent=2) + "\n")
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def _meta(config: TrainConfig, report: TrainReport) -> dict[str, object]:
    low, high = input_bounds()
    return {
        "num_classes": NUM_CLASSES,
        "class_names": list(CLASS_NAMES),
        "width": config.width,
        "noise_max": config.noise_max,
        "image_size": config.image_size,
        "mean": list(MEAN),
        "std": list(STD),
        "input_low": list(low),
        "input_high": list(high),
        "heldout_accuracy": report.heldout_accuracy,
        "per_class_accuracy": report.per_class_accuracy,
        "heldout_seed": report.heldout_seed,
        "heldout_count": config.heldout_count,
        "train_seed": report.seed,
        "train_count": config.train_count,
        "seed": report.seed,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "threads": config.threads,
        "train_seconds": round(report.train_seconds, 3),
        "total_seconds": round(report.total_seconds, 3),
        "state_dict_sha256": report.state_dict_sha256,
        "torch_version": torch.__version__,
    }


def train(out_dir: Path, *, seed: int = 0, config: TrainConfig | None = None) -> TrainReport:
    """Generate data, train :class:`ShapesNet`, evaluate it and write the artefacts.

    Writes ``weights.pt`` (a plain state dict), ``index_to_name.json`` and
    ``model-meta.json`` into ``out_dir``. Global torch settings are restored afterwards.
    """
    cfg = config or TrainConfig()
    heldout_seed = seed + HELDOUT_SEED_OFFSET
    start = time.perf_counter()
    with _deterministic_torch(seed, cfg.threads):
        train_set = make_dataset(cfg.train_count, seed, cfg.image_size)
        heldout = make_dataset(cfg.heldout_count, heldout_seed, cfg.image_size)
        data_done = time.perf_counter()
        model = ShapesNet(NUM_CLASSES, width=cfg.width)
        generator = torch.Generator().manual_seed(seed)
        # Channels-last convolutions are markedly faster on CPU; the model goes back to the
        # default layout before evaluation so that the reported accuracy is that of the plain
        # NCHW model that consumers load.
        model.to(memory_format=torch.channels_last)
        final_loss = _fit(model, train_set, cfg, generator)
        model.to(memory_format=torch.contiguous_format)
        train_done = time.perf_counter()
        accuracy, per_class = evaluate(model, heldout)
    report = TrainReport(
        out_dir=out_dir,
        heldout_accuracy=accuracy,
        per_class_accuracy=per_class,
        final_train_loss=final_loss,
        data_seconds=data_done - start,
        train_seconds=train_done - data_done,
        total_seconds=time.perf_counter() - start,
        seed=seed,
        heldout_seed=heldout_seed,
        state_dict_sha256=state_dict_sha256(model),
    )
    _write_artifacts(out_dir, model, _meta(cfg, report))
    return report


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train the smoothexplain demo classifier.")
    parser.add_argument("--out", type=Path, required=True, help="artefact directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--train-count", type=int, default=TrainConfig.train_count)
    parser.add_argument("--threads", type=int, default=TrainConfig.threads)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    config = TrainConfig(epochs=args.epochs, train_count=args.train_count, threads=args.threads)
    report = train(args.out, seed=args.seed, config=config)
    print(f"demo model written to {report.out_dir}: {report.summary()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
