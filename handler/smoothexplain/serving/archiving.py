"""`smoothexplain archive`: package a user's model for `smoothexplain serve`.

One model file + class + state_dict (eager), a TorchScript file, or an ONNX file becomes
`STORE/NAME.mar`: TorchServe's archiver underneath, our handler, the labels and a
model-config.yaml built from the arguments over our defaults (or over the user's config).
Unless `check=False`, the archive is first checked in a fresh process (modelcheck.py) and only
moved into the store when it can serve.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..protocol.errors import InvalidArgument, SmoothExplainError
from .config import parse_config

__all__ = ["ArchiveFailed", "ModelSource", "Preprocessing", "build_archive"]

HANDLER_FILE = Path(__file__).resolve().parent / "ts_entry.py"
LABELS_FILE = "index_to_name.json"
# TorchServe keys of an archive without --config: one worker, dynamic batching of 4 requests.
TORCHSERVE_DEFAULTS: Mapping[str, int] = {
    "minWorkers": 1,
    "maxWorkers": 1,
    "batchSize": 4,
    "maxBatchDelay": 20,
    "responseTimeout": 120,
}
_STDERR_KEPT = 64 * 1024  # characters of the check's stderr searched for its error line
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")  # also a file name and a URL part


class ArchiveFailed(SmoothExplainError):
    """The model cannot serve (the check failed): the message says why."""


@dataclass(frozen=True)
class ModelSource:
    """Exactly one of: `model_class` (+ `model_file`) with `weights`, `torchscript`, `onnx`.

    `model_class` is a class name defined in `model_file`, or `package.module:Class` when the
    class is importable where the server runs (then `model_file` is None)."""

    model_file: Path | None = None
    model_class: str | None = None
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    weights: Path | None = None
    torchscript: Path | None = None
    onnx: Path | None = None

    def format(self) -> str:
        given = [n for n in ("weights", "torchscript", "onnx") if getattr(self, n) is not None]
        if len(given) != 1:
            raise InvalidArgument(
                "give exactly one of --weights (with --model-class), --torchscript, --onnx",
                field="model",
            )
        kind = {"weights": "eager"}.get(given[0], given[0])
        if kind == "eager" and not self.model_class:
            raise InvalidArgument("--weights needs --model-class", field="model_class")
        if kind != "eager" and (self.model_class or self.model_file):
            raise InvalidArgument(
                f"--model-file/--model-class are for state_dicts, not --{kind}", field="model_class"
            )
        return kind

    def weights_file(self) -> Path:
        path = self.weights or self.torchscript or self.onnx
        assert path is not None  # format() checked it
        return path

    def class_path(self) -> str:
        assert self.model_class is not None
        if self.model_file is None:
            if ":" not in self.model_class:
                raise InvalidArgument(
                    "--model-class needs --model-file, or the form package.module:Class",
                    field="model_class",
                )
            return self.model_class
        if not re.fullmatch(r"[A-Za-z_]\w*", self.model_file.stem):
            raise InvalidArgument(
                f"--model-file {self.model_file.name} must be named like a Python module",
                field="model_file",
            )
        return f"{self.model_file.stem}:{self.model_class}"


@dataclass(frozen=True)
class Preprocessing:
    """Overrides of the model-config's `preprocess` (None keeps the config's value)."""

    size: int | None = None
    resize: int | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None

    def apply(self, section: dict[str, Any]) -> None:
        values = {k: getattr(self, k) for k in ("size", "resize", "mean", "std")}
        chosen = {k: list(v) if isinstance(v, Sequence) else v for k, v in values.items()}
        pre = dict(section.get("preprocess") or {})
        pre.update({k: v for k, v in chosen.items() if v is not None})
        if pre:
            section["preprocess"] = pre


def _require_file(path: Path, flag: str) -> Path:
    if not path.is_file():
        what = "is not a file" if path.exists() else "no such file"
        raise InvalidArgument(f"{flag} {path}: {what}", field=flag.lstrip("-"))
    return path


def _labels(path: Path) -> str:
    """The labels file as we store it; {"0": "tench"} and {"0": ["n01440764", "tench"]} pass."""
    try:
        raw = json.loads(_require_file(path, "--labels").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidArgument(f"--labels {path} is not JSON: {error}", field="labels") from None
    ok = isinstance(raw, dict) and all(
        isinstance(k, str) and k.isdigit() and (isinstance(v, str) or _pair(v))
        for k, v in raw.items()
    )
    if not ok:
        raise InvalidArgument(
            f'--labels {path} must map class indices to names: {{"0": "tench"}} or '
            'TorchServe\'s {"0": ["n01440764", "tench"]}',
            field="labels",
        )
    return json.dumps(raw, indent=1, ensure_ascii=False)


def _pair(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


def _model_config(
    base: Path | None, source: ModelSource, pre: Preprocessing, output: str | None, labels: bool
) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if base is not None:
        loaded = yaml.safe_load(_require_file(base, "--config").read_text())
        if not isinstance(loaded, dict):
            raise InvalidArgument(f"--config {base} must be a YAML mapping", field="config")
        config = loaded
    for key, value in TORCHSERVE_DEFAULTS.items():
        config.setdefault(key, value)
    section = dict(config.get("smoothexplain") or {})
    kind = source.format()
    section["format"], section["weights"] = kind, source.weights_file().name
    if kind == "eager":
        section["model_class"] = source.class_path()
        if source.model_kwargs:
            section["model_kwargs"] = dict(source.model_kwargs)
    if labels:
        section["labels"] = LABELS_FILE
    if output is not None:
        section["output"] = output
    pre.apply(section)
    parse_config(section)  # every key and value checked now, not in the worker
    config["smoothexplain"] = section
    return config


def _stage(
    folder: Path,
    source: ModelSource,
    labels: Path | None,
    extra_files: Sequence[Path],
) -> list[Path]:
    files = [_require_file(source.weights_file(), "--weights")]
    if source.model_file is not None:
        files.append(_require_file(source.model_file, "--model-file"))
    files += [_require_file(p, "--extra-files") for p in extra_files]
    staged = []
    generated = {"model-config.yaml", HANDLER_FILE.name, "MAR-INF", "MANIFEST.json"}
    generated |= {LABELS_FILE} if labels is not None else set()
    for path in files:
        target = folder / path.name
        if path.name in generated:
            raise InvalidArgument(
                f"{path} is named like a file the archive makes itself ({path.name}): rename it",
                field="extra_files",
            )
        if target.exists():
            raise InvalidArgument(f"two archive files are named {path.name}", field="extra_files")
        shutil.copyfile(path, target)
        staged.append(target)
    if labels is not None:
        (folder / LABELS_FILE).write_text(_labels(labels), encoding="utf-8")
        staged.append(folder / LABELS_FILE)
    return staged


def _archiver() -> str:
    found = shutil.which("torch-model-archiver", path=str(Path(sys.executable).parent))
    return found or shutil.which("torch-model-archiver") or "torch-model-archiver"


def _run_archiver(name: str, folder: Path, staged: list[Path], export: Path) -> Path:
    command = [
        _archiver(),
        "--model-name",
        name,
        "--version",
        "1.0",
        "--handler",
        str(HANDLER_FILE),
        "--extra-files",
        ",".join(str(p) for p in staged),
        "--config-file",
        str(folder / "model-config.yaml"),
        "--export-path",
        str(export),
        "--force",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ArchiveFailed(f"torch-model-archiver failed: {done.stderr.strip()[-500:]}")
    return export / f"{name}.mar"


def _run_check(command: list[str], cwd: str, timeout: float) -> tuple[int, str]:
    """Exit status and the end of stderr of the check, run in a session of its own: on a
    timeout, and once it ends, every process the model's code left behind is killed with it.
    stderr goes to a file, not a pipe, which a leftover child would hold open."""
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as stderr:
        process = subprocess.Popen(command, cwd=cwd, stderr=stderr, start_new_session=True)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ArchiveFailed(
                f"the check did not finish within {timeout:.0f} s: does the model's forward "
                "end? (a slow model: raise --check-timeout)"
            ) from None
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        stderr.seek(max(0, stderr.seek(0, os.SEEK_END) - _STDERR_KEPT))
        return process.returncode, stderr.read()


def _check(archive: Path, timeout: float) -> None:
    """modelcheck in a fresh interpreter started in an empty folder (no stray imports); it
    passes only by writing its passed-file, so a model that ends the process early fails."""
    with tempfile.TemporaryDirectory(prefix="smoothexplain-check-cwd-") as cwd:
        passed = Path(cwd) / "passed.json"
        command = [sys.executable, "-m", "smoothexplain.serving.modelcheck", str(archive.resolve())]
        code, stderr = _run_check([*command, "--passed-file", str(passed)], cwd, timeout)
        if code == 0 and passed.is_file():
            return
    lines = stderr.strip().splitlines()
    if code < 0:
        name = signal.Signals(-code).name
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        raise ArchiveFailed(f"the check process was killed by {name}{hint}")
    if code == 0:
        raise ArchiveFailed(
            "the check process ended before its checks did (exit status 0 without a result): "
            "does the model's code call sys.exit or os._exit?"
        )
    errors = [line for line in lines if line.startswith("error: ")]
    if not errors and not lines:
        raise ArchiveFailed(
            f"the check process failed with exit status {code} without a message: does the "
            "model's code close or redirect stderr?"
        )
    raise ArchiveFailed((errors or lines)[-1].removeprefix("error: "))


def build_archive(
    name: str,
    source: ModelSource,
    *,
    store: Path = Path("model_store"),
    labels: Path | None = None,
    config: Path | None = None,
    extra_files: Sequence[Path] = (),
    preprocess: Preprocessing = Preprocessing(),
    output: str | None = None,
    check: bool = True,
    check_timeout: float = 600.0,
    force: bool = False,
) -> Path:
    """Write `store/name.mar`; raises InvalidArgument (bad arguments) or ArchiveFailed (the
    model cannot serve). An existing archive is kept unless `force`."""
    if not _NAME.fullmatch(name):
        raise InvalidArgument(
            f"NAME {name!r} must be 1 to 100 letters, digits, '_', '-' or '.', starting with a "
            "letter or digit",
            field="name",
        )
    target = store / f"{name}.mar"
    if target.exists() and not force:
        raise InvalidArgument(f"{target} exists; --force replaces it", field="name")
    model_config = _model_config(config, source, preprocess, output, labels is not None)
    with tempfile.TemporaryDirectory(prefix="smoothexplain-archive-") as tmp:
        folder = Path(tmp)
        (folder / "files").mkdir()
        staged = _stage(folder / "files", source, labels, extra_files)
        (folder / "model-config.yaml").write_text(yaml.safe_dump(model_config, sort_keys=False))
        built = _run_archiver(name, folder, staged, folder)
        if check:
            print(f"checking {name} in a fresh process, as a TorchServe worker loads it:")
            _check(built, check_timeout)
        store.mkdir(parents=True, exist_ok=True)
        shutil.move(str(built), target)
    return target
