"""`make run`: start the server in the background, explain two images over gRPC, say where.

The shapes model explains a generated star (fast, what the tests use); the pretrained
EfficientNet-Lite0 explains a real photograph (scikit-image's cat) with SmoothGrad and AdaptGrad,
side by side in `run/compare.png`. A server that an earlier `make run` left running is reused
when it serves every model, and restarted otherwise; `make stop` ends it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as tvf  # type: ignore[import-untyped]
from PIL import Image, ImageDraw

from .._proto.smoothexplain.v1 import explain_pb2 as pb
from ..client.remote import SmoothExplainClient, attribution
from ..protocol.heatmap import heatmap_png, overlay_png
from ..protocol.local_server import read_record
from .archive import ARCHIVES
from .lite0 import NAME as LITE0
from .shapes import CLASS_NAMES, render_sample

__all__ = ["main"]

MODELS = (*ARCHIVES, LITE0)
PANEL = 224  # Lite0's input side: the photo as the model sees it, and its maps


def _alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _earlier(workdir: Path) -> dict[str, object] | None:
    """The endpoints of a server an earlier `make run` left running, if it still runs."""
    endpoints = workdir / "endpoints.json"
    if not endpoints.is_file():
        return None
    found = dict(json.loads(endpoints.read_text()))
    if _alive(found.get("pid")):
        return found
    endpoints.unlink()  # a crashed server's leftovers
    return None


def _start(workdir: Path, store: Path, timeout: float) -> dict[str, object]:
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir.parent / "serve.log"
    command = [sys.executable, "-m", "smoothexplain.client.cli", "serve", "--workdir", str(workdir)]
    command += ["--model-store", str(store), "--models", *(f"{m}={m}.mar" for m in MODELS)]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    print(f"starting TorchServe with {len(MODELS)} models (about a minute) ", end="", flush=True)
    started, endpoints = time.monotonic(), workdir / "endpoints.json"
    while not endpoints.is_file():
        if process.poll() is not None or time.monotonic() > started + timeout:
            raise SystemExit(f"\nthe server did not start; see {log_path}")
        time.sleep(1.0)
        if int(time.monotonic() - started) % 5 == 0:
            print(".", end="", flush=True)
    print(f" ready in {time.monotonic() - started:.0f} s", flush=True)
    return dict(json.loads(endpoints.read_text()))


def _server(workdir: Path, store: Path, timeout: float) -> dict[str, object]:
    earlier = _earlier(workdir)
    if earlier is not None:
        served = {str(m) for m in earlier.get("models", [])}  # type: ignore[attr-defined]
        if served >= set(MODELS):
            print(f"reusing the server started earlier (pid {earlier['pid']})")
            return earlier
        print(f"restarting the earlier server: it lacks {sorted(set(MODELS) - served)}")
        stop = [sys.executable, "-m", "smoothexplain.client.cli", "stop", "--workdir", str(workdir)]
        subprocess.run(stop, check=True)
    return _start(workdir, store, timeout)


def _panel(image: Image.Image, title: str) -> Image.Image:
    framed = Image.new("RGB", (PANEL, PANEL + 18), "white")
    framed.paste(image.convert("RGB").resize((PANEL, PANEL)), (0, 18))
    ImageDraw.Draw(framed).text((4, 3), title, fill="black")
    return framed


def _compare(photo: Image.Image, maps: dict[str, torch.Tensor]) -> Image.Image:
    """photo | one heatmap per map, each panel titled."""
    panels = [_panel(photo, "photo (as the model sees it)")]
    for title, heat in maps.items():
        panels.append(_panel(Image.open(io.BytesIO(heatmap_png(heat))), title))
    sheet = Image.new(
        "RGB", (sum(p.width for p in panels) + 8 * (len(panels) - 1), panels[0].height), "white"
    )
    for i, panel in enumerate(panels):
        sheet.paste(panel, (i * (PANEL + 8), 0))
    return sheet


def _cat(run_dir: Path, client: SmoothExplainClient) -> tuple[Path, Path, pb.Response]:
    from skimage import data  # the demo extra ships it

    photo = Image.fromarray(data.chelsea())  # type: ignore[no-untyped-call]  # CC0 (scikit-image)
    path = run_dir / "cat.png"
    photo.save(path)
    maps, answer = {}, pb.Response()
    for noise, title in (("gaussian", "SmoothGrad"), ("adaptive", "AdaptGrad")):
        answer = client.explain(LITE0, path.read_bytes(), seed=0, noise=noise, top_k=3)
        label = next((s.label for s in answer.top_k if s.index == answer.target), "")
        maps[f"{title}: {label or answer.target}"] = attribution(answer)
    seen = tvf.center_crop(tvf.resize(photo, 256), PANEL)
    compare = run_dir / "compare.png"
    _compare(seen, maps).save(compare)
    return path, compare, answer


def _star(run_dir: Path, label: str, client: SmoothExplainClient) -> tuple[Path, pb.Response]:
    image, _ = render_sample(CLASS_NAMES.index(label), seed=2024)
    sample = run_dir / "sample.png"
    image.save(sample)
    response = client.explain("shapes", sample.read_bytes(), seed=0, encoding="float32_and_png")
    (run_dir / "heatmap.png").write_bytes(response.heatmap_png)
    pixels = np.asarray(image.convert("RGB"))
    (run_dir / "overlay.png").write_bytes(overlay_png(attribution(response), pixels))
    buffer = io.BytesIO()
    np.save(buffer, attribution(response).numpy())
    (run_dir / "attributions.npy").write_bytes(buffer.getvalue())
    return sample, response


def _explorer_lines(endpoints: dict[str, object], workdir: Path) -> list[str]:
    """Where the explorer page is and its current login link (a one-time token)."""
    url = endpoints.get("explorer")
    if not url:
        return []
    login = workdir / "explorer_login"
    link = login.read_text().strip() if login.is_file() else f"{url} (see {login})"
    port = str(url).rstrip("/").rsplit(":", 1)[-1]
    return [
        f"  explorer   {link}",
        f"             (one login per link; the next one is in {login}; from another machine:"
        f" ssh -L {port}:127.0.0.1:{port} THIS_HOST)",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", type=Path, default=Path("run"))
    parser.add_argument("--store", type=Path, default=Path("model_store"))
    parser.add_argument("--label", default="star", choices=CLASS_NAMES)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    run_dir: Path = args.run_dir.absolute()
    endpoints = _server(run_dir / "server", args.store, args.timeout)
    host, port = str(endpoints["grpc"]).rsplit(":", 1)
    key_file = Path(str(endpoints["key_file"]))
    with SmoothExplainClient(
        transport="grpc", host=host, grpc_port=int(port), token_file=key_file
    ) as client:
        sample, star = _star(run_dir, args.label, client)
        print("explaining the cat photograph with EfficientNet-Lite0 (SmoothGrad, AdaptGrad)")
        cat, compare, lite = _cat(run_dir, client)
    cli = Path(sys.executable).parent.absolute() / "smoothexplain"
    top3 = ", ".join(f"{s.label} {s.probability:.2f}" for s in lite.top_k)
    recorded = read_record()
    lines = [
        "",
        "smoothexplain is running.",
        f"  cat        {cat}: EfficientNet-Lite0 says {top3}",
        f"             {compare}  (photo | SmoothGrad | AdaptGrad, {lite.nt_samples} samples)",
        f"  star       {sample}: shapes model says {star.top_k[0].label} "
        f"p={star.top_k[0].probability:.3f}; {run_dir / 'heatmap.png'}, {run_dir / 'overlay.png'}",
        f"  REST       {endpoints['rest']}/explanations/{LITE0}  (and /predictions/{LITE0})",
        f"  gRPC       {endpoints['grpc']}  (TorchServe's InferenceAPIsService/Predictions)",
        *_explorer_lines(endpoints, run_dir / "server"),
        f"  metrics    {endpoints['metrics']}",
        f"  token      {key_file}  (the CLI finds it through "
        f"{'the server record' if recorded else 'SMOOTHEXPLAIN_KEY_FILE'})",
        f"  models     {', '.join(str(m) for m in endpoints['models'])}",  # type: ignore[attr-defined]
        f"  logs       {endpoints['logs']}  and  {run_dir / 'serve.log'}",
        f"  try        {cli} explain {cat} --model {LITE0} --out heat.png",
        f"             {cli} predict {cat} --model {LITE0}",
        "  stop       make stop",
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
