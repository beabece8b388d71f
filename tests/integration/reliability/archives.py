"""Model archives for the reliability tests: the demo weights behind other classes and limits."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from .expected import REPO_ROOT

__all__ = ["FAULTY", "UNGUARDED", "build_archive"]

TEMPLATE = REPO_ROOT / "deploy" / "model-config.yaml"
HANDLER = REPO_ROOT / "handler" / "smoothexplain" / "serving" / "ts_entry.py"
FAULTY = Path(__file__).with_name("faulty.py")
UNGUARDED = Path(__file__).with_name("unguarded_entry.py")  # answers StreamPredictions2 too


def build_archive(
    store: Path,
    name: str,
    artifacts: Path,
    *,
    model_class: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    torchserve: Mapping[str, Any] | None = None,
    limits: Mapping[str, Any] | None = None,
    weights: Path | None = None,
    extra_files: Sequence[Path] = (),
    nt_samples_batch_size: int | None = None,
    handler: Path = HANDLER,
) -> Path:
    """`store/name.mar`: the demo model config with the given overrides.

    torchserve: top-level model-config keys (batchSize, responseTimeout, ...);
    model_class/model_kwargs/limits: our `smoothexplain:` section (kwargs merged over the
    trained model's num_classes and width); weights: another state_dict file; handler: another
    `--handler` entry file (a test-only variant of ts_entry.py).
    """
    meta = json.loads((artifacts / "model-meta.json").read_text())
    config = yaml.safe_load(TEMPLATE.read_text())
    for key, value in (torchserve or {}).items():  # None removes a key
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    section = config["smoothexplain"]
    section["format"], section["weights"] = "eager", "weights.pt"
    if model_class:
        section["model_class"] = model_class
    kwargs = {"num_classes": meta["num_classes"], "width": meta["width"]}
    section["model_kwargs"] = {**kwargs, **(model_kwargs or {})}
    section["limits"] = {**section.get("limits", {}), **(limits or {})}
    if nt_samples_batch_size is not None:
        section["nt_samples_batch_size"] = nt_samples_batch_size
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "model-config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        shutil.copy(weights or artifacts / "weights.pt", folder / "weights.pt")
        files = [folder / "weights.pt", artifacts / "index_to_name.json", *extra_files]
        archiver = Path(sys.executable).parent / "torch-model-archiver"
        subprocess.run(
            [
                str(archiver) if archiver.is_file() else "torch-model-archiver",
                "--model-name", name,
                "--version", "1.0",
                "--handler", str(handler),
                "--extra-files", ",".join(str(f) for f in files),
                "--config-file", str(folder / "model-config.yaml"),
                "--export-path", str(store),
                "--force",
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
    return store / f"{name}.mar"
