"""The `smoothexplain archive NAME ...` subcommand: flags → `archiving.build_archive`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TypeAlias

from ..protocol.errors import InvalidArgument
from .archiving import ArchiveFailed, ModelSource, Preprocessing, build_archive

__all__ = ["EXIT_CANNOT_SERVE", "add_archive", "run_archive"]

EXIT_CANNOT_SERVE = 2

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_archive(subparsers: Subparsers) -> None:
    """`archive NAME (--model-file F --model-class C --weights W | --torchscript F | --onnx F)`."""
    parser = subparsers.add_parser(
        "archive",
        help="package your model as STORE/NAME.mar for `smoothexplain serve`",
        description="Package a model for `smoothexplain serve` and check, in a fresh process, "
        "that it loads, predicts and explains. Exit 2: the model cannot serve (the message "
        "says why); 1: any other failure.",
    )
    parser.add_argument("name", metavar="NAME", help="model name (URL path, archive file name)")
    parser.add_argument(
        "--store", "--model-store", dest="store", type=Path, default=Path("model_store")
    )
    model = parser.add_argument_group("the model (one of three forms)")
    model.add_argument("--model-file", type=Path, help="Python file defining the model class")
    model.add_argument(
        "--model-class",
        help="class in --model-file, or package.module:Class importable on the server",
    )
    model.add_argument(
        "--model-kwargs", default="{}", metavar="JSON", help="constructor keyword arguments"
    )
    model.add_argument("--weights", type=Path, help="state_dict file (torch.save)")
    model.add_argument("--torchscript", type=Path, help="TorchScript file (traced or scripted)")
    model.add_argument("--onnx", type=Path, help="ONNX file (converted with onnx2torch)")
    extra = parser.add_argument_group("serving")
    extra.add_argument(
        "--labels",
        type=Path,
        help='index_to_name.json: {"0": "tench"} or TorchServe\'s {"0": ["n01440764", "tench"]}',
    )
    extra.add_argument("--config", type=Path, help="model-config.yaml to start from")
    extra.add_argument("--extra-files", type=Path, nargs="+", default=[], metavar="F")
    extra.add_argument("--size", type=int, help="centre crop fed to the model (default 224)")
    extra.add_argument("--resize", type=int, help="shorter side before the crop (default 256)")
    extra.add_argument("--mean", type=float, nargs="+", metavar="M", help="per channel")
    extra.add_argument("--std", type=float, nargs="+", metavar="S", help="per channel")
    extra.add_argument(
        "--output", metavar="INDEX_OR_KEY", help="the logits of a tuple/dict/object output"
    )
    parser.add_argument(
        "--check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="load, predict and explain in a fresh process first (default: on)",
    )
    parser.add_argument(
        "--check-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="give up on a check that takes longer (default 600)",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing NAME.mar")
    parser.set_defaults(run=run_archive)


def _kwargs(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidArgument(
            f"--model-kwargs is not JSON: {error}", field="model_kwargs"
        ) from None
    if not isinstance(value, dict):
        raise InvalidArgument("--model-kwargs must be a JSON object", field="model_kwargs")
    return value


def run_archive(args: argparse.Namespace) -> int:
    source = ModelSource(
        model_file=args.model_file,
        model_class=args.model_class,
        model_kwargs=_kwargs(args.model_kwargs),
        weights=args.weights,
        torchscript=args.torchscript,
        onnx=args.onnx,
    )
    try:
        path = _build(args, source)
    except ArchiveFailed as error:  # the model cannot serve: exit 2, like a bad argument
        print(f"error: {error.message}", file=sys.stderr)
        return EXIT_CANNOT_SERVE
    print(
        f"wrote {path}; serve it with: smoothexplain serve --model-store {args.store} "
        f"--models {args.name}={path.name}"
    )
    return 0


def _build(args: argparse.Namespace, source: ModelSource) -> Path:
    return build_archive(
        args.name,
        source,
        store=args.store,
        labels=args.labels,
        config=args.config,
        extra_files=args.extra_files,
        preprocess=Preprocessing(args.size, args.resize, args.mean, args.std),
        output=args.output,
        check=args.check,
        check_timeout=args.check_timeout,
        force=args.force,
    )
