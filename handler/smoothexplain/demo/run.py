"""`make run`: start the server in the background, explain a generated image over gRPC, say where.

Reuses a server that `make run` already started (run/server/endpoints.json); `make stop` ends it.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..client import SmoothExplainClient, attribution
from ..heatmap import overlay_png
from .archive import ARCHIVES
from .shapes import CLASS_NAMES, render_sample

__all__ = ["main"]


def _server(workdir: Path, store: Path, timeout: float) -> dict[str, object]:
    endpoints = workdir / "endpoints.json"
    if endpoints.is_file():
        return dict(json.loads(endpoints.read_text()))
    workdir.mkdir(parents=True, exist_ok=True)
    log = (workdir.parent / "serve.log").open("ab")
    models = [f"{name}={name}.mar" for name in ARCHIVES]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "smoothexplain.cli",
            "serve",
            "--workdir",
            str(workdir),
            "--model-store",
            str(store),
            "--models",
            *models,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while not endpoints.is_file():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the server did not start; see {workdir.parent / 'serve.log'}")
        time.sleep(0.5)
    return dict(json.loads(endpoints.read_text()))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", type=Path, default=Path("run"))
    parser.add_argument("--store", type=Path, default=Path("model_store"))
    parser.add_argument("--label", default="star", choices=CLASS_NAMES)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    run_dir: Path = args.run_dir
    endpoints = _server(run_dir / "server", args.store, args.timeout)
    image, _ = render_sample(CLASS_NAMES.index(args.label), seed=2024)
    sample = run_dir / "sample.png"
    image.save(sample)
    host, port = str(endpoints["grpc"]).rsplit(":", 1)
    with SmoothExplainClient(
        transport="grpc",
        host=host,
        grpc_port=int(port),
        token_file=Path(str(endpoints["key_file"])),
    ) as client:
        response = client.explain("shapes", sample.read_bytes(), seed=0, encoding="float32_and_png")
    heatmap, overlay = run_dir / "heatmap.png", run_dir / "overlay.png"
    heatmap.write_bytes(response.heatmap_png)
    pixels = np.asarray(image.convert("RGB"))
    overlay.write_bytes(overlay_png(attribution(response), pixels))
    buffer = io.BytesIO()
    np.save(buffer, attribution(response).numpy())
    (run_dir / "attributions.npy").write_bytes(buffer.getvalue())
    top, models = response.top_k[0], ", ".join(str(m) for m in endpoints["models"])  # type: ignore[attr-defined]
    lines = [
        "",
        "smoothexplain is running.",
        f"  explained  {sample} (a {args.label}): predicted {top.label} p={top.probability:.3f};",
        f"             smoothgrad of class {response.target}, {response.nt_samples} samples,"
        f" seed {response.seed}",
        f"  heatmap    {heatmap}  overlay {overlay}  raw {run_dir / 'attributions.npy'}",
        f"  REST       {endpoints['rest']}/explanations/shapes  (and /predictions/shapes)",
        f"  gRPC       {endpoints['grpc']}  (TorchServe's InferenceAPIsService/Predictions)",
        f"  metrics    {endpoints['metrics']}",
        f"  token      {endpoints['key_file']}",
        f"             export SMOOTHEXPLAIN_KEY_FILE={Path(str(endpoints['key_file'])).resolve()}",
        f"  models     {models}",
        f"  logs       {endpoints['logs']}  and  {run_dir / 'serve.log'}",
        f"  try        .venv/bin/smoothexplain explain {sample} --model shapes --out heat.png",
        "  stop       make stop",
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
