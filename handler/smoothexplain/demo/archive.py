"""`make model`: train the demo model if needed and build its TorchServe archives.

Three archives of the same weights: `shapes` (eager module + state_dict), `shapes_ts`
(TorchScript) and `shapes_onnx` (ONNX, converted back with onnx2torch at load time).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from .net import INDEX_TO_NAME_FILE, META_FILE, WEIGHTS_FILE, load_model
from .train import train

__all__ = ["ARCHIVES", "build_archives", "main"]

ARCHIVES = {"shapes": "eager", "shapes_ts": "torchscript", "shapes_onnx": "onnx"}
_EXPORTED = {"eager": WEIGHTS_FILE, "torchscript": "model_ts.pt", "onnx": "model.onnx"}


def _export(artifacts: Path, fmt: str, size: int) -> Path:
    path = artifacts / _EXPORTED[fmt]
    if fmt == "eager":
        return path
    model = load_model(artifacts)
    example = torch.zeros(2, 3, size, size)
    with warnings.catch_warnings():  # torch.jit's and the legacy ONNX exporter's notices
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        _write(model, example, fmt, path)
    return path


def _write(model: torch.nn.Module, example: torch.Tensor, fmt: str, path: Path) -> None:
    if fmt == "torchscript":
        torch.jit.save(torch.jit.trace(model, example), str(path))  # type: ignore[no-untyped-call]
    else:  # dynamo=False: the legacy exporter needs no onnxscript
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "rows"}, "logits": {0: "rows"}},
        )


def _model_config(template: Path, fmt: str, weights: Path, meta: dict[str, Any]) -> str:
    config = yaml.safe_load(template.read_text())
    section = config["smoothexplain"]
    section["format"], section["weights"] = fmt, weights.name
    section["model_kwargs"] = {"num_classes": meta["num_classes"], "width": meta["width"]}
    return yaml.safe_dump(config, sort_keys=False)


def build_archives(
    artifacts: Path,
    store: Path,
    template: Path,
    handler: Path,
    names: Sequence[str] = tuple(ARCHIVES),
) -> list[Path]:
    if not (artifacts / WEIGHTS_FILE).is_file():
        print(train(artifacts).summary())
    meta = json.loads((artifacts / META_FILE).read_text())
    store.mkdir(parents=True, exist_ok=True)
    built = []
    for name in names:
        fmt = ARCHIVES[name]
        weights = _export(artifacts, fmt, int(meta.get("image_size", 64)))
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "model-config.yaml"
            config.write_text(_model_config(template, fmt, weights, meta))
            (store / f"{name}.mar").unlink(missing_ok=True)  # rebuilt: no "Overwriting" notice
            extra = ",".join(str(p) for p in (weights, artifacts / INDEX_TO_NAME_FILE))
            archiver = shutil.which("torch-model-archiver", path=str(Path(sys.executable).parent))
            subprocess.run(
                [
                    archiver or "torch-model-archiver",
                    "--model-name",
                    name,
                    "--version",
                    "1.0",
                    "--handler",
                    str(handler),
                    "--extra-files",
                    extra,
                    "--config-file",
                    str(config),
                    "--export-path",
                    str(store),
                    "--force",
                ],
                check=True,
            )
        built.append(store / f"{name}.mar")
        print(f"built {built[-1]} ({fmt})", flush=True)
    return built


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/demo"))
    parser.add_argument("--store", type=Path, default=Path("model_store"))
    parser.add_argument("--template", type=Path, default=Path("deploy/model-config.yaml"))
    parser.add_argument(
        "--handler",
        type=Path,
        default=Path(__file__).resolve().parent.parent / "serving" / "ts_entry.py",
    )
    parser.add_argument("--only", nargs="*", choices=sorted(ARCHIVES), default=list(ARCHIVES))
    args = parser.parse_args(argv)
    build_archives(args.artifacts, args.store, args.template, args.handler, args.only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
