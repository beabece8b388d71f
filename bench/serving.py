"""Serving overhead: end-to-end explain latency through a real TorchServe 0.12 (REST JSON, REST
raw image, gRPC; float32, float16 and PNG encodings) against our engine alone on the same input
and settings in this process, every contender once per round. Target: ≤ 1.15× the engine.

The peer: TorchServe's stock `image_classifier` handler on the same ResNet-18 weights and image;
its `/explanations` runs Captum IntegratedGradients (n_steps 15, target 0) and answers a nested
JSON list. We answer the same computation (IG, n_steps 15, no noise, target 0) beside it.

Latency is the client's wall time for one request, sent alone (no batch delay), including
building the request and decoding the answer into a float32 tensor. Our workers run with the
default `keep_freed_memory`, so this process applies the same malloc settings before the engine
runs alone (without them the engine alone pays page faults the workers do not).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import requests
import torch
import yaml
from common import add_device_arguments, interleaved, machine, output_path, resolve_device, write
from google.protobuf import json_format
from serving_store import RESNET_ROWS, TORCHSERVE_KEYS, build, resnet_config
from torch import nn
from tv_resnet18 import ResNet18

from smoothexplain import explain
from smoothexplain._proto.smoothexplain.v1 import explain_pb2 as pb
from smoothexplain._proto.torchserve import inference_pb2 as ts
from smoothexplain._proto.torchserve import inference_pb2_grpc as ts_grpc
from smoothexplain.allocator import keep_freed_memory
from smoothexplain.codec import GRPC_KEY, image_to_tensor, message_to_tensor
from smoothexplain.config import parse_config
from smoothexplain.demo import load_model, render_sample
from smoothexplain.launcher import TorchServeInstance

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "artifacts" / "demo"
DEMO_CONFIG = REPO / "deploy" / "model-config.yaml"
MODELS = {name: f"{name}.mar" for name in ("se_resnet18", "ts_resnet18", "shapes")}
SEED = 7
ENCODINGS = {"float32": pb.ENCODING_FLOAT32, "float16": pb.ENCODING_FLOAT16, "png": pb.ENCODING_PNG}


class Served:
    """Talks to one TorchServe instance and remembers what the last answer weighed and what
    the worker said it spent (Response.timings)."""

    def __init__(self, server: TorchServeInstance, channel: grpc.Channel) -> None:
        self.server, self.stub = server, ts_grpc.InferenceAPIsServiceStub(channel)
        self.session = requests.Session()
        self.last_bytes, self.last_timings = 0, pb.Timings()

    def _post(self, path: str, data: bytes | str, json_body: bool) -> requests.Response:
        headers = self.server.inference_headers()
        if json_body:
            headers["Content-Type"] = "application/json"
        answer = self.session.post(
            f"{self.server.inference_url}/{path}", data=data, headers=headers, timeout=300
        )
        answer.raise_for_status()
        self.last_bytes = len(answer.content)
        return answer

    def _decoded(self, response: pb.Response) -> torch.Tensor:
        if response.HasField("error"):
            raise RuntimeError(response.error.message)
        self.last_timings = response.timings
        if response.HasField("attribution"):
            return message_to_tensor(response.attribution)
        return torch.tensor(len(response.heatmap_png))

    def rest_json(self, model: str, request: pb.Request) -> torch.Tensor:
        answer = self._post(f"explanations/{model}", json_format.MessageToJson(request), True)
        return self._decoded(json_format.Parse(answer.text, pb.Response()))

    def rest_raw(self, model: str, png: bytes) -> torch.Tensor:
        answer = self._post(f"explanations/{model}", png, False)
        return self._decoded(json_format.Parse(answer.text, pb.Response()))

    def grpc(self, model: str, request: pb.Request) -> torch.Tensor:
        reply = self.stub.Predictions(
            ts.PredictionsRequest(model_name=model, input={GRPC_KEY: request.SerializeToString()}),
            metadata=self.server.grpc_metadata(),
            timeout=300,
        )
        self.last_bytes = len(reply.prediction)
        return self._decoded(pb.Response.FromString(reply.prediction))

    def stock(self, model: str, png: bytes) -> torch.Tensor:
        """The stock handler's explain answer: a JSON list (one per input) of nested lists."""
        answer = self._post(f"explanations/{model}", png, False)
        self.last_timings = pb.Timings()
        return torch.tensor(json.loads(answer.content), dtype=torch.float32).squeeze(0)


def png_bytes(size: int) -> bytes:
    """A demo star on clutter, scaled to `size`² (deterministic)."""
    image, _ = render_sample(5, 3)
    if image.size[0] != size:
        image = image.resize((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def request(png: bytes, target: int, options: dict[str, Any], encoding: str) -> pb.Request:
    return pb.Request(
        input=pb.Input(image=png),
        explain=True,
        target=target,
        options=pb.ExplainOptions(seed=SEED, encoding=ENCODINGS[encoding], **options),
    )


def measure(
    served: Served, contenders: dict[str, Callable[[], torch.Tensor]], repeats: int, device: Any
) -> dict[str, Any]:
    """Interleaved latencies, plus answer size, worker timings and agreement with the engine.

    `outside_engine_ms` is each served request's wall time minus the explain time its worker
    reported: what serving adds, measured within one request, so it does not depend on how
    fast the engine happened to run in that round of a busy machine."""
    sizes: dict[str, int] = {}
    worker: dict[str, list[dict[str, float]]] = {name: [] for name in contenders}

    def recorded(name: str, fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            served.last_bytes, served.last_timings = 0, pb.Timings()
            start = time.perf_counter()
            out = fn()
            wall_ms = 1000 * (time.perf_counter() - start)
            sizes[name] = served.last_bytes
            t = served.last_timings
            worker[name].append(
                {
                    "decode": t.decode_ms,
                    "predict": t.predict_ms,
                    "explain": t.explain_ms,
                    "encode": t.encode_ms,
                    "outside_engine": wall_ms - t.explain_ms,
                }
            )
            return out

        return call

    wrapped = {name: recorded(name, fn) for name, fn in contenders.items()}
    reference = contenders["engine"]().flatten().float().cpu()
    agreement = {}
    for name, fn in contenders.items():
        out = fn().flatten().float().cpu()
        # A raw image gets a server-drawn seed and PNG is a picture: nothing to compare.
        comparable = out.shape == reference.shape and name != "rest_raw_image"
        agreement[name] = float((out - reference).norm() / reference.norm()) if comparable else None
    times = interleaved(wrapped, repeats, warmup=0, device=device)
    base = statistics.median(times["engine"])
    found = {}
    for name, runs in times.items():
        medians = {key: statistics.median(w[key] for w in worker[name]) for key in worker[name][0]}
        served_here = name != "engine" and medians["explain"] > 0
        found[name] = {
            "median_s": statistics.median(runs),
            "runs_s": runs,
            "ratio_to_engine": statistics.median(runs) / base,
            "overhead_ms": 1000 * (statistics.median(runs) - base),
            "response_bytes": sizes[name],
            "worker_ms": medians,
            "outside_engine_ms": medians["outside_engine"] if served_here else None,
            # engine alone + what serving adds: the ratio a quiet machine would show
            "ratio_from_outside": 1 + medians["outside_engine"] / (1000 * base)
            if served_here
            else None,
            "relative_l2_to_engine": agreement[name],
        }
    return found


def smoothgrad_contenders(
    served: Served,
    model_name: str,
    net: nn.Module,
    png: bytes,
    x: torch.Tensor,
    bounds: tuple[torch.Tensor, torch.Tensor],
    rows: int,
    target: int,
    nt_samples: int,
) -> dict[str, Callable[[], torch.Tensor]]:
    options = {"nt_samples": nt_samples}

    def engine() -> torch.Tensor:
        return explain(
            net,
            x[None],
            target,
            nt_samples=nt_samples,
            nt_samples_batch_size=rows,
            bounds=bounds,
            seed=SEED,
        )[0]

    found: dict[str, Callable[[], torch.Tensor]] = {"engine": engine}
    for encoding in ("float32", "float16"):
        asked = request(png, target, options, encoding)
        found[f"rest_json_{encoding}"] = lambda r=asked: served.rest_json(model_name, r)
    if nt_samples == 50:  # a raw image gets the configured defaults (nt_samples 50)
        found["rest_raw_image"] = lambda: served.rest_raw(model_name, png)
    for encoding in ("float32", "float16", "png"):
        asked = request(png, target, options, encoding)
        found[f"grpc_{encoding}"] = lambda r=asked: served.grpc(model_name, r)
    return found


def peer_contenders(
    served: Served, net: nn.Module, png: bytes, x: torch.Tensor, steps: int
) -> dict[str, Callable[[], torch.Tensor]]:
    options = {
        "method": pb.METHOD_INTEGRATED_GRADIENTS,
        "nt_type": pb.NT_TYPE_NONE,
        "n_steps": steps,
    }
    json_f32, grpc_f16 = request(png, 0, options, "float32"), request(png, 0, options, "float16")

    def engine() -> torch.Tensor:
        return explain(
            net,
            x[None],
            0,
            method="integrated_gradients",
            nt_type="none",
            n_steps=steps,
            nt_samples_batch_size=RESNET_ROWS,
        )[0]

    return {
        "engine": engine,
        "stock_torchserve_captum_ig": lambda: served.stock("ts_resnet18", png),
        "rest_json_float32": lambda: served.rest_json("se_resnet18", json_f32),
        "grpc_float16": lambda: served.grpc("se_resnet18", grpc_f16),
    }


def resnet(weights: Path, device: torch.device) -> nn.Module:
    net = ResNet18()
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return net.eval().to(device).requires_grad_(False)


def model_input(
    config: Any, png: bytes, device: torch.device
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """The image as the server preprocesses it, and the bounds its sigma is a fraction of."""
    x = image_to_tensor(png, config.preprocess, config.limits).to(device)
    low, high = config.preprocess.bounds()
    bounds = (
        torch.tensor(low, device=device).view(-1, 1, 1),
        torch.tensor(high, device=device).view(-1, 1, 1),
    )
    return x, bounds


def serve_and_measure(
    served: Served,
    models: dict[str, tuple[Any, nn.Module, bytes]],
    device: torch.device,
    nt_samples: int,
    repeats: int,
) -> dict[str, Any]:
    cases: dict[str, Any] = {}
    for name, (config, net, png) in models.items():
        x, bounds = model_input(config, png, device)
        target = int(net(x[None]).argmax())
        rows = config.nt_samples_batch_size
        found = smoothgrad_contenders(served, name, net, png, x, bounds, rows, target, nt_samples)
        cases[name] = {
            "request": f"SmoothGrad of the gradient, nt_samples {nt_samples}, sigma 0.15",
            "input_bytes": len(png),
            "model_input": list(x.shape),
            "nt_samples_batch_size": rows,
            "results": measure(served, found, repeats, device),
        }
        if name == "se_resnet18":
            cases["peer_ig"] = {
                "request": "IntegratedGradients n_steps 15, no noise, target 0",
                "input_bytes": len(png),
                "model_input": list(x.shape),
                "nt_samples_batch_size": rows,
                "results": measure(
                    served, peer_contenders(served, net, png, x, 15), repeats, device
                ),
            }
        medians = {k: round(v["median_s"], 4) for k, v in cases[name]["results"].items()}
        print(name, json.dumps(medians), flush=True)
    return cases


def run(args: argparse.Namespace, device: torch.device, root: Path) -> dict[str, Any]:
    nt_samples, repeats = (4, 1) if args.smoke else (50, args.repeats)
    defaults = {"nt_samples": nt_samples}
    weights = build(root / "store", root / "scratch", defaults, ARTIFACTS)
    demo = load_model(ARTIFACTS).to(device).requires_grad_(False)
    models = {  # name: (its model-config, the same model here, the image sent)
        "se_resnet18": (
            parse_config(resnet_config(defaults)["smoothexplain"]),
            resnet(weights, device),
            png_bytes(256),
        ),
        "shapes": (
            parse_config(yaml.safe_load(DEMO_CONFIG.read_text())["smoothexplain"]),
            demo,
            png_bytes(64),
        ),
    }
    overrides = {"number_of_gpu": "0"} if device.type == "cpu" else {}
    started_on = machine(device)
    with (
        TorchServeInstance(
            root / "store", MODELS, root / "ts", config_overrides=overrides
        ) as server,
        grpc.insecure_channel(
            server.grpc_target, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        ) as channel,
    ):
        cases = serve_and_measure(Served(server, channel), models, device, nt_samples, repeats)
    return {
        "benchmark": "serving overhead",
        "machine": started_on,
        "settings": {
            "torchserve": "0.12.0, one worker per model, batchSize 1",
            "torchserve_keys": TORCHSERVE_KEYS,
            "seed": SEED,
            "repeats": repeats,
            "smoke": args.smoke,
        },
        "cases": cases,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_device_arguments(parser)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (≥ 3)")
    args = parser.parse_args()
    device = resolve_device(args)
    keep_freed_memory()  # as our TorchServe workers do (model config default)
    # Short path: TorchServe's worker sockets live under it (108-byte Unix socket limit).
    with tempfile.TemporaryDirectory(prefix="sebench-") as tmp:
        record = run(args, device, Path(tmp))
    write(output_path(args, "serving", device), record)


if __name__ == "__main__":
    main()
