"""`smoothexplain` command line: classify or explain one image on a running TorchServe.

    smoothexplain explain cat.jpg --model resnet18 --seed 1 --out heat.png
    smoothexplain predict cat.jpg --model resnet18 --top-k 3

The token comes from $SMOOTHEXPLAIN_TOKEN or TorchServe's key_file.json (--token-file,
$SMOOTHEXPLAIN_KEY_FILE, ./key_file.json, or the key file of the server that `smoothexplain
serve` runs on this machine, found through its record: see local_server.py); it is never
accepted on the command line, where other users could read it from the process list.
Exit status: 0 on success, 2 for a bad argument or request field, 1 for any other failure.

Subcommands are registered by the small `add_*` functions listed in `SUBCOMMANDS`; each sets
`run` (a `Namespace -> int` function) as its parser default.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import grpc
import numpy as np
from google.protobuf import json_format
from PIL import Image

from .._proto.smoothexplain.v1 import explain_pb2 as pb
from ..protocol.errors import InvalidArgument, SmoothExplainError
from ..protocol.heatmap import heatmap_png, overlay_png
from ..protocol.images import load_image
from ..protocol.local_server import stale_record
from ..protocol.options import OPTIONS, Option
from .remote import ExplainError, SmoothExplainClient, attribution

__all__ = ["SUBCOMMANDS", "build_parser", "main"]

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Runner: TypeAlias = Callable[[argparse.Namespace], int]

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


# -- parser -----------------------------------------------------------------------------------


def _connection_options() -> argparse.ArgumentParser:
    """Options every client subcommand shares (a parent parser)."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection")
    group.add_argument("--model", required=True, help="registered TorchServe model name")
    group.add_argument("--transport", choices=("grpc", "rest"), default="grpc")
    local = "default: the local `smoothexplain serve`'s record, else"
    group.add_argument("--host", help=f"{local} 127.0.0.1")
    group.add_argument("--rest-port", type=int, metavar="PORT", help=f"{local} 8080")
    group.add_argument("--grpc-port", type=int, metavar="PORT", help=f"{local} 7070")
    group.add_argument(
        "--token-file",
        type=Path,
        metavar="PATH",
        help="TorchServe key_file.json (default: $SMOOTHEXPLAIN_KEY_FILE, ./key_file.json, "
        "then the local server's record)",
    )
    group.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS")
    group.add_argument(
        "--tls",
        action="store_true",
        help="HTTPS and gRPC over TLS, the certificate verified (default: as the local "
        "server's record says)",
    )
    group.add_argument(
        "--tls-ca",
        type=Path,
        metavar="PEM",
        help="CA certificate(s) to verify the server with (implies --tls; default: the "
        "system's trusted roots)",
    )
    group.add_argument(
        "--no-retry",
        dest="retry",
        action="store_false",
        help="do not send the request again when TorchServe's worker died or is unavailable "
        "(by default it is retried once, with the same seed, if the timeout leaves time)",
    )
    parent.add_argument("--json", action="store_true", help="print the Response as JSON")
    parent.add_argument("image", metavar="IMAGE", help="PNG, JPEG or WebP file ('-' reads stdin)")
    return parent


# The explain options that have a flag (the options table names it); --target and --top-k
# are request fields, and the encoding follows from --out.
CLI_OPTIONS: tuple[Option, ...] = tuple(o for o in OPTIONS if o.flag)


def _add_option(group: argparse._ArgumentGroup, entry: Option) -> None:
    """One table option as a flag: choices for an enum, a switch for a bool."""
    limits = "" if entry.choices or entry.kind is bool or entry.low is None else f" {entry.span()}"
    text = entry.help + limits
    if entry.choices:
        group.add_argument(entry.flag, dest=entry.name, choices=entry.choices, help=text)
    elif entry.kind is bool:
        group.add_argument(entry.flag, dest=entry.name, action="store_true", help=text)
    else:
        metavar = {int: "N", str: "NAME"}.get(entry.kind, "X")
        group.add_argument(entry.flag, dest=entry.name, type=entry.kind, metavar=metavar, help=text)


def add_explain(subparsers: Subparsers) -> None:
    """`explain IMAGE --model NAME ...`: attribution map, heatmap and summary."""
    parser = subparsers.add_parser(
        "explain",
        parents=[_connection_options()],
        help="explain the model's prediction for one image",
        description="Explain one image; unset options take the model's configured defaults.",
    )
    opts = parser.add_argument_group("explanation")
    for entry in CLI_OPTIONS:
        _add_option(opts, entry)
    opts.add_argument("--target", type=int, metavar="K", help="class to explain (default top-1)")
    opts.add_argument("--top-k", type=int, metavar="K", help="classes to report")
    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, metavar="PNG", help="write the heatmap PNG here")
    out.add_argument(
        "--overlay",
        type=Path,
        metavar="PNG",
        help="write the heatmap over the image (centre-square crop resized to the map)",
    )
    out.add_argument(
        "--save-attributions", type=Path, metavar="NPY", help="write the (C, H, W) float32 map"
    )
    parser.set_defaults(run=run_explain)


def add_predict(subparsers: Subparsers) -> None:
    """`predict IMAGE --model NAME [--top-k K]`: the top classes."""
    parser = subparsers.add_parser(
        "predict", parents=[_connection_options()], help="classify one image"
    )
    parser.add_argument("--top-k", type=int, metavar="K", help="classes to report")
    parser.set_defaults(run=run_predict)


def _needs_extra(
    module: str, register: str, commands: tuple[str, ...], extra: str
) -> Callable[[Subparsers], None]:
    """Register `commands` from `module` (imported only when the parser is built); without
    the packages of `extra` installed, each of them exits 2 naming the extra to install."""

    def add(subparsers: Subparsers) -> None:
        try:
            found = importlib.import_module(module, __package__)
        except ModuleNotFoundError as error:
            if (error.name or "").split(".")[0] == "smoothexplain":
                raise  # our own module is missing: a broken install, not a missing extra
            for command in commands:
                _add_missing(subparsers, command, extra, str(error))
            return
        getattr(found, register)(subparsers)

    return add


def _add_missing(subparsers: Subparsers, command: str, extra: str, why: str) -> None:
    text = f"smoothexplain {command} needs the {extra} extra: pip install 'smoothexplain[{extra}]'"
    # Takes every argument, flags included (no prefix character), so `serve --help` says it too.
    parser = subparsers.add_parser(
        command, help=f"(needs the {extra} extra)", add_help=False, prefix_chars="\x01"
    )
    parser.add_argument("ignored", nargs="*", help=argparse.SUPPRESS)

    def refuse(args: argparse.Namespace) -> int:
        _report(f"{text} ({why})")
        return EXIT_INVALID

    parser.set_defaults(run=refuse)


SUBCOMMANDS: tuple[Callable[[Subparsers], None], ...] = (
    add_explain,
    add_predict,
    _needs_extra("..serving.archive_command", "add_archive", ("archive",), "serve"),
    _needs_extra("..ops.serve", "add_serve", ("serve",), "serve"),
    _needs_extra("..ops.serve", "add_stop", ("stop",), "serve"),
)


def build_parser(
    subcommands: Sequence[Callable[[Subparsers], None]] = SUBCOMMANDS,
) -> argparse.ArgumentParser:
    """The `smoothexplain` parser with one subparser per registration function."""
    parser = argparse.ArgumentParser(
        prog="smoothexplain", description="Smoothed gradient explanations from TorchServe."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in subcommands:
        register(subparsers)
    return parser


# -- commands ---------------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> SmoothExplainClient:
    return SmoothExplainClient(
        transport=args.transport,
        host=args.host,
        rest_port=args.rest_port,
        grpc_port=args.grpc_port,
        token_file=args.token_file,
        timeout=args.timeout,
        retry=args.retry,
        tls=True if args.tls else None,
        root_certificates=args.tls_ca,
    )


def _read_image(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(name).read_bytes()
    except OSError as error:
        raise InvalidArgument(
            f"cannot read image {name}: {error.strerror or error}", field="IMAGE"
        ) from None


def run_explain(args: argparse.Namespace) -> int:
    """Explain IMAGE, write the requested files, print a summary (or the JSON Response)."""
    image = _read_image(args.image)
    _check_outputs(args)
    with _client(args) as client:
        response = client.explain(
            args.model,
            image,
            target=args.target,
            top_k=args.top_k,
            encoding="float32_and_png" if args.out else "float32",
            **{entry.name: getattr(args, entry.name) for entry in CLI_OPTIONS},
        )
    written = _write_outputs(args, response, image)
    if args.json:
        print(_as_json(response))
        for line in written:
            print(f"wrote {line}", file=sys.stderr)
    else:
        print(explain_summary(response, written))
    return EXIT_OK


def run_predict(args: argparse.Namespace) -> int:
    """Classify IMAGE and print the top classes (or the JSON Response)."""
    image = _read_image(args.image)
    with _client(args) as client:
        response = client.predict(args.model, image, top_k=args.top_k)
    print(_as_json(response) if args.json else predict_summary(response))
    return EXIT_OK


# -- outputs ----------------------------------------------------------------------------------


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse an output file whose folder does not exist before the explanation is computed."""
    for flag, path in (
        ("--out", args.out),
        ("--overlay", args.overlay),
        ("--save-attributions", args.save_attributions),
    ):
        if path is not None and not path.resolve().parent.is_dir():
            raise InvalidArgument(
                f"{flag} {path}: the folder {path.resolve().parent} does not exist", field=flag
            )


def _write_outputs(args: argparse.Namespace, response: pb.Response, image: bytes) -> list[str]:
    """Write --out, --overlay and --save-attributions; one description per file written."""
    written: list[str] = []
    heat = attribution(response)
    if args.out:
        args.out.write_bytes(response.heatmap_png or heatmap_png(heat))
        written.append(f"heatmap {args.out}")
    if args.overlay:
        crop = (response.crop.resize, response.crop.size) if response.HasField("crop") else None
        args.overlay.write_bytes(overlay_png(heat, _image_like(image, heat, crop)))
        written.append(f"overlay {args.overlay}")
    if args.save_attributions:
        np.save(args.save_attributions, np.asarray(heat))
        shape = "×".join(str(n) for n in heat.shape)
        written.append(f"attributions {args.save_attributions} ({shape} float32)")
    return written


def _image_like(
    image: bytes, heat: Any, crop: tuple[int, int] | None = None
) -> np.ndarray[Any, Any]:
    """The image as (H, W, 3) uint8 matching the map, upright as its EXIF orientation says.

    `crop` = the model's (resize, size), as the Response reports it: cut as the server cuts it
    (torchvision's Resize + CenterCrop). Without it (a server older than Response.crop) the
    centre square, which matches exactly when the model's resize equals its crop size. Then
    resized to the map's size where that differs.
    """
    picture = load_image(image, crop=crop, field="IMAGE")
    if crop is None:
        side = min(picture.size)
        left, top = (picture.width - side) // 2, (picture.height - side) // 2
        picture = picture.crop((left, top, left + side, top + side))
    height, width = int(heat.shape[-2]), int(heat.shape[-1])
    if picture.size != (width, height):
        picture = picture.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(picture, dtype=np.uint8)


def _as_json(response: pb.Response) -> str:
    return json_format.MessageToJson(response, preserving_proto_field_name=True, indent=2)


def _label(response: pb.Response, index: int) -> str:
    for score in response.top_k:
        if score.index == index:
            return f'{index} "{score.label}" (p={score.probability:.4f})'
    return str(index)


def _top1(response: pb.Response) -> str:
    return _label(response, response.top_k[0].index) if response.top_k else "none"


def explain_summary(response: pb.Response, written: Sequence[str] = ()) -> str:
    """A few human lines: top class, target, seed, samples, rows, timings, files."""
    t = response.timings
    explained = (
        f"explained target {_label(response, response.target)}: seed {response.seed}, "
        f"{response.nt_samples} noise samples, {response.rows} model rows"
    )
    if response.HasField("convergence_delta"):
        explained += f", convergence delta {response.convergence_delta:.3g}"
    lines = [
        f"model {response.model or '?'}: top class {_top1(response)}",
        explained,
        f"timings: decode {t.decode_ms:.1f} ms, predict {t.predict_ms:.1f} ms, "
        f"explain {t.explain_ms:.1f} ms, encode {t.encode_ms:.1f} ms "
        f"(batch of {t.batch_size})",
    ]
    lines += [f"wrote {line}" for line in written]
    return "\n".join(lines)


def predict_summary(response: pb.Response) -> str:
    """The top class, then the ranked list."""
    lines = [f"model {response.model or '?'}: top class {_top1(response)}"]
    lines += [
        f'  {rank}. {score.index} "{score.label}" p={score.probability:.4f}'
        for rank, score in enumerate(response.top_k, start=1)
    ]
    return "\n".join(lines)


# -- errors and entry point -------------------------------------------------------------------


def _report(message: str, field: str = "") -> None:
    where = f" (field: {field})" if field else ""
    print(f"error: {message}{where}", file=sys.stderr)


def _rpc_failure(error: grpc.RpcError) -> int:
    # A bare grpc.RpcError may lack code()/details() at run time (only calls carry them).
    code_of, details_of = getattr(error, "code", None), getattr(error, "details", None)
    code = code_of() if callable(code_of) else grpc.StatusCode.UNKNOWN
    details = (details_of() if callable(details_of) else None) or "gRPC call failed"
    if isinstance(error, ExplainError):
        _report(details, error.field)
    else:  # raised by the gRPC channel itself (unreachable, deadline, TorchServe auth)
        _report(f"{code.name}: {details}")
    stale = stale_record()
    if stale is not None and code is not grpc.StatusCode.INVALID_ARGUMENT:
        print(f"hint: {stale}", file=sys.stderr)
    elif code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        print("hint: check $SMOOTHEXPLAIN_TOKEN or --token-file", file=sys.stderr)
    return EXIT_INVALID if code is grpc.StatusCode.INVALID_ARGUMENT else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (expected errors print one line, no trace)."""
    args = build_parser().parse_args(argv)
    run: Runner = args.run
    try:
        return run(args)
    except grpc.RpcError as error:
        return _rpc_failure(error)
    except SmoothExplainError as error:
        _report(error.message, error.field)
        return EXIT_INVALID if isinstance(error, InvalidArgument) else EXIT_FAILED
    except OSError as error:
        _report(str(error))
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
