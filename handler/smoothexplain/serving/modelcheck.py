"""Will this archive serve? Load it from its own files, as a worker would, and try every method.

Run in a fresh process by `smoothexplain archive` (``python -m smoothexplain.serving.modelcheck
ARCHIVE.mar``), so that nothing the archiving process imported can hide a file missing from the
archive. Checks, in order, each failure a message a user can act on (exit status 2):

- the model-config parses; the model loads (class importable, state_dict fits);
- a forward on generated inputs of the configured shape returns `(rows, classes)` scores — a
  tuple, dict or object output is described, with the `--output` that would pick its logits;
- the labels file, when there is one, has one label per class;
- a 3-row batch gives the rows' one-at-a-time answers (catches ONNX exports with a fixed batch
  size and TorchScript traced in train mode);
- a prediction and one short explanation per method through the data plane itself.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from PIL import Image

from .._proto.smoothexplain.v1 import explain_pb2 as pb
from ..engine.cpu import cpu_support
from ..engine.spec import Method
from ..protocol.errors import SmoothExplainError
from .codec import tensor_to_message
from .config import ServingConfig, parse_config
from .models import load_labels, load_served
from .service import ExplainService, Incoming

__all__ = ["CheckFailed", "CheckReport", "check_model_dir", "main"]

EXIT_OK, EXIT_CANNOT_SERVE = 0, 2
BATCH_ROWS = 3
# Request fields whose 400 means "this method does not apply to this model", not a fault.
_NOT_APPLICABLE = ("options.method", "options.layer")
_METHOD_ENUM = {m: pb.Method.Value(f"METHOD_{m.name}") for m in Method}


class CheckFailed(Exception):
    """The archive cannot serve; the message says why and what to change."""


@dataclass
class CheckReport:
    lines: list[str] = field(default_factory=list)
    methods: dict[str, str] = field(default_factory=dict)  # method → "ok" or why not

    def say(self, line: str) -> None:
        self.lines.append(line)
        print(line, flush=True)


def _describe(result: object) -> str:
    """What a model returned, with the `--output` choices that would pick a tensor."""
    if isinstance(result, tuple | list):
        parts = [f"{i}: {_describe(v)}" for i, v in enumerate(result)]
        return f"{type(result).__name__} ({', '.join(parts)})"
    if isinstance(result, dict):
        return "dict (" + ", ".join(f"{k!r}: {_describe(v)}" for k, v in result.items()) + ")"
    if isinstance(result, torch.Tensor):
        return f"tensor {tuple(result.shape)}"
    tensors = [k for k, v in vars(result).items() if isinstance(v, torch.Tensor)]
    return f"{type(result).__name__} with tensor attributes {tensors}"


def _output_hint(result: object) -> str:
    if isinstance(result, tuple | list):
        return "0"
    if isinstance(result, dict):
        return str(next(iter(result), "logits"))
    return "logits" if hasattr(result, "logits") else "ATTRIBUTE"


def _scores(model: torch.nn.Module, rows: torch.Tensor, config: ServingConfig) -> torch.Tensor:
    with torch.no_grad():
        try:
            result = model(rows)
        except Exception as error:
            raise CheckFailed(
                f"the model fails on a batch of {len(rows)} rows of shape "
                f"{tuple(rows.shape[1:])}: {type(error).__name__}: {error}. An ONNX or "
                "TorchScript file exported with a fixed batch size cannot serve batches: "
                "export with a dynamic first axis (dynamic_axes={'input': {0: 'rows'}})"
            ) from None
    if not isinstance(result, torch.Tensor):
        raise CheckFailed(
            f"the model returns a {_describe(result)}, not a (rows, classes) tensor: name the "
            f"logits with --output {_output_hint(result)} (model-config 'output')"
        )
    if not result.is_floating_point():
        raise CheckFailed(
            f"the model returns {result.dtype} scores: explanations need floating-point "
            "scores (logits) that gradients can flow through"
        )
    if result.dim() != 2 or len(result) != len(rows):
        raise CheckFailed(
            f"the model returns a tensor of shape {tuple(result.shape)} for {len(rows)} rows; "
            "it must be (rows, classes) scores"
            + (f" (config 'output' is {config.output!r})" if config.output else "")
            + (
                "; a first axis that does not follow the rows means an export with a fixed "
                "batch size: export with a dynamic first axis (dynamic_axes={'input': {0: 'rows'}})"
                if result.dim() >= 1 and len(result) != len(rows)
                else ""
            )
        )
    if not bool(torch.isfinite(result).all()):
        raise CheckFailed(
            f"the model returns non-finite scores (NaN or inf) for {len(rows)} generated "
            "inputs in the configured range: check its weights and --mean/--std"
        )
    return result


def _inputs(config: ServingConfig, rows: int) -> torch.Tensor:
    """Rows of the configured shape, pixels uniform in [0, 1] after normalisation."""
    pre = config.preprocess
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(rows, pre.channels, pre.size, pre.size, generator=generator)
    mean = torch.tensor(pre.mean).view(-1, 1, 1)
    std = torch.tensor(pre.std).view(-1, 1, 1)
    return (pixels - mean) / std


def _check_batch(model: torch.nn.Module, rows: torch.Tensor, config: ServingConfig) -> str:
    together = _scores(model, rows, config)
    alone = torch.cat([_scores(model, rows[i : i + 1], config) for i in range(len(rows))])
    gap = float((together - alone).abs().max())
    scale = float(alone.abs().max()) or 1.0
    if gap > 1e-4 * scale + 1e-5:
        raise CheckFailed(
            f"a batch of {len(rows)} rows scores differently from the same rows one at a time "
            f"(max difference {gap:.3g}): is the model in train mode (BatchNorm with batch "
            "statistics, dropout — trace or export it after model.eval()), or was it exported "
            "with a fixed batch size?"
        )
    return f"{len(rows)} rows at once = one at a time (max difference {gap:.1e})"


def _check_labels(labels: dict[int, str], classes: int, config: ServingConfig) -> str:
    if not labels:
        return f"{classes} classes, no labels file (answers show class numbers)"
    if len(labels) != classes or set(labels) != set(range(classes)):
        raise CheckFailed(
            f"{config.labels} has {len(labels)} labels (indices {min(labels)}..{max(labels)}) "
            f"but the model has {classes} classes: one label per class index 0..{classes - 1}"
        )
    return f"{classes} classes, labels from {config.labels} (0: {labels[0]!r})"


def _request(method: Method, row: torch.Tensor) -> bytes:
    options = pb.ExplainOptions(method=_METHOD_ENUM[method], nt_samples=2, n_steps=4, seed=0)
    tensor = tensor_to_message(row, pb.DTYPE_FLOAT32)
    return pb.Request(
        input=pb.Input(tensor=tensor), explain=True, options=options
    ).SerializeToString()


def _check_methods(service: ExplainService, row: torch.Tensor, report: CheckReport) -> None:
    for method in Method:
        started = time.perf_counter()
        (answer,) = service.handle([Incoming(_request(method, row), from_grpc=True)])
        seconds = time.perf_counter() - started
        response = pb.Response.FromString(answer.body if isinstance(answer.body, bytes) else b"")
        if response.HasField("error"):
            error = response.error
            if error.field not in _NOT_APPLICABLE or error.http_status != 400:
                where = f" (field {error.field})" if error.field else ""
                raise CheckFailed(
                    f"{method.value} fails: {error.message}{where}; the server log of a real "
                    "worker would show the same failure"
                )
            report.methods[method.value] = f"not applicable: {error.message}"
        else:
            report.methods[method.value] = "ok"
            rows = max(response.rows, 1)
            report.say(f"  {method.value:<27} {seconds / rows * 1e3:7.1f} ms/row ({rows} rows)")
    for name, verdict in report.methods.items():
        if verdict != "ok":
            report.say(f"  {name:<27} {verdict}")


def _cam_layers(service: ExplainService, row: torch.Tensor) -> str:
    """The modules a CAM request may name (`options.layer`), as this model's loader names
    them (an ONNX model's converted names), with the default."""
    cams = service.scheduler.cams
    if cams.refusal is not None:
        return f"none: {cams.refusal}"
    usable = cams.census(row).usable(service.config.cam_reshape)
    return f"CAM default {service.default_layer}; {len(usable)} usable: " + ", ".join(usable)


def check_model_dir(model_dir: Path) -> CheckReport:
    """Every check on an unpacked archive; raises CheckFailed with the first problem found."""
    report = CheckReport()
    raw = yaml.safe_load((model_dir / "model-config.yaml").read_text()) or {}
    try:
        config = parse_config(raw.get("smoothexplain"))
        notes: list[str] = []
        served = load_served(model_dir, config, torch.device("cpu"), note=notes.append)
        model = served.model
        labels = load_labels(model_dir, config)
    except SmoothExplainError as error:
        raise CheckFailed(error.message) from None
    rows = _inputs(config, BATCH_ROWS)
    started = time.perf_counter()
    classes = _scores(model, rows[:1], config).shape[1]
    predict_ms = (time.perf_counter() - started) * 1e3
    report.say(f"  input  {tuple(rows.shape[1:])} per row, {config.format} model")
    report.say(f"  output {_check_labels(labels, classes, config)}")
    report.say(f"  batch  {_check_batch(model, rows, config)}")
    report.say(f"  predict {predict_ms:.1f} ms/row")
    report.say(f"  cpu    {cpu_support().describe()}")
    report.say(f"  layout {config.memory_format}" + "".join(f"; {n}" for n in notes))
    try:
        service = ExplainService(
            model, config, labels, torch.device("cpu"), model_dir.name, layers=served.layers
        )
    except SmoothExplainError as error:  # e.g. defaults.precision this CPU cannot run fast
        raise CheckFailed(error.message) from None
    report.say(f"  image  {_check_image(service, config)}")
    report.say(f"  layers {_cam_layers(service, rows[0])}")
    _check_methods(service, rows[0], report)
    return report


def _check_image(service: ExplainService, config: ServingConfig) -> str:
    """A photo-sized PNG through decoding, resize + crop and the model, as clients send them."""
    side = max(config.preprocess.resize, config.preprocess.size)
    pixels = torch.randint(0, 256, (side + 7, side + 3, 3), dtype=torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    (answer,) = service.handle([Incoming(buffer.getvalue(), explain_path=False)])
    if answer.status != 200:
        body = answer.body if isinstance(answer.body, str) else answer.body.decode()
        raise CheckFailed(
            f"a {side + 3}×{side + 7} PNG is refused: {json.loads(body)['error']['message']}"
        )
    pre = config.preprocess
    return f"a {side + 3}×{side + 7} PNG predicts (resize {pre.resize}, crop {pre.size})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", type=Path, help="a .mar file or an unpacked archive folder")
    parser.add_argument(
        "--passed-file",
        type=Path,
        help="written (with the methods found) only when every check passed: a model that ends "
        "the process early (sys.exit, os._exit) cannot look like a pass",
    )
    args = parser.parse_args(argv)
    archive: Path = args.archive
    with tempfile.TemporaryDirectory(prefix="smoothexplain-check-") as tmp:
        model_dir = archive
        if archive.is_file():
            model_dir = Path(tmp) / archive.stem
            with zipfile.ZipFile(archive) as mar:
                mar.extractall(model_dir)
        try:
            report = check_model_dir(model_dir)
        except CheckFailed as error:
            print(f"error: {error}", file=sys.stderr, flush=True)
            return EXIT_CANNOT_SERVE
        except SystemExit as error:  # raised by the model's own code, not by us
            print(
                f"error: the model's code called sys.exit({error.code!r}) while being loaded or "
                "run: a served model must not end its worker",
                file=sys.stderr,
                flush=True,
            )
            return EXIT_CANNOT_SERVE
    if args.passed_file is not None:
        args.passed_file.write_text(json.dumps({"passed": True, "methods": report.methods}))
    return EXIT_OK


def _exit_now(code: int) -> None:
    """End the process even if the model's code left non-daemon threads running."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit_now(main())
