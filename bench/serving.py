"""Serving overhead: end-to-end explain latency through a real TorchServe 0.12 (REST JSON, REST
raw image, gRPC; float32, float16 and PNG encodings) against our engine alone on the same input
and settings in this process, every contender once per round. Target: ≤ 1.15× the engine.

Models (`--models`, default all): ResNet-18 (random weights, a 256² PNG), the demo model, and
the pretrained EfficientNet-Lite0 on the cat photograph (451×300 PNG). A run of some models
merges its tables into an existing result file (the others keep their own date and machine).

The peer: TorchServe's stock `image_classifier` handler on the same weights and image (ResNet-18
and EfficientNet-Lite0); its `/explanations` runs Captum IntegratedGradients (n_steps 15,
target 0) and answers a nested JSON list. We answer the same computation (IG, n_steps 15, no
noise, target 0) beside it, and for EfficientNet-Lite0 also its top-5 predictions. The stock
handler preprocesses with torchvision, so its answers are compared with ours computed in this
process on torchvision's input (the two preprocessings of a non-square photograph differ).

Latency is the client's wall time for one request, sent alone (no batch delay), including
building the request and decoding the answer into a float32 tensor. Our workers run with the
default `keep_freed_memory`, so this process applies the same malloc settings before the engine
runs alone (without them the engine alone pays page faults the workers do not).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import requests
import torch
import yaml
from common import (
    add_device_arguments,
    interleaved,
    machine,
    merge_into,
    output_path,
    resolve_device,
    write,
)
from google.protobuf import json_format
from lite0 import LITE0, cat_png, categories, imagenet_tensor, lite0
from PIL import Image
from serving_store import ARCHIVES, TORCHSERVE_KEYS, build, lite0_config, resnet_config
from torch import nn
from tv_resnet18 import ResNet18

from smoothexplain import explain
from smoothexplain._proto.smoothexplain.v1 import explain_pb2 as pb
from smoothexplain._proto.torchserve import inference_pb2 as ts
from smoothexplain._proto.torchserve import inference_pb2_grpc as ts_grpc
from smoothexplain.demo import load_model, render_sample
from smoothexplain.ops.launcher import TorchServeInstance
from smoothexplain.serving.allocator import keep_freed_memory
from smoothexplain.serving.codec import GRPC_KEY, image_to_tensor, message_to_tensor
from smoothexplain.serving.config import parse_config
from smoothexplain.serving.models import prepare_model

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "artifacts" / "demo"
DEMO_CONFIG = REPO / "deploy" / "model-config.yaml"
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

    def predict_rest(self, model: str, png: bytes) -> pb.Response:
        answer = self._post(f"predictions/{model}", png, False)
        return self._predicted(json_format.Parse(answer.text, pb.Response()))

    def predict_grpc(self, model: str, request: pb.Request) -> pb.Response:
        reply = self.stub.Predictions(
            ts.PredictionsRequest(model_name=model, input={GRPC_KEY: request.SerializeToString()}),
            metadata=self.server.grpc_metadata(),
            timeout=300,
        )
        self.last_bytes = len(reply.prediction)
        return self._predicted(pb.Response.FromString(reply.prediction))

    def _predicted(self, response: pb.Response) -> pb.Response:
        if response.HasField("error"):
            raise RuntimeError(response.error.message)
        self.last_timings = response.timings
        return response

    def stock_predict_rest(self, model: str, png: bytes) -> dict[str, float]:
        """The stock handler's top-5: `{label: probability}` (one input, one mapping)."""
        answer = self._post(f"predictions/{model}", png, False)
        self.last_timings = pb.Timings()
        scores: dict[str, float] = json.loads(answer.content)
        return scores

    def stock_predict_grpc(self, model: str, png: bytes) -> dict[str, float]:
        reply = self.stub.Predictions(
            ts.PredictionsRequest(model_name=model, input={"data": png}),
            metadata=self.server.grpc_metadata(),
            timeout=300,
        )
        self.last_bytes, self.last_timings = len(reply.prediction), pb.Timings()
        scores: dict[str, float] = json.loads(reply.prediction)
        return scores


@dataclass(frozen=True)
class Subject:
    """One network as served: our archive (also the name of its SmoothGrad table), its
    model-config, the same network in this process (as loaded, and as the server runs it:
    BatchNorm folded), the image sent, and the stock handler's archive of the same weights
    with the names of the tables comparing the two."""

    model: str  # the model choice (serving_store.ARCHIVES)
    name: str
    config: Any
    net: nn.Module
    png: bytes
    stock: str | None = None
    peer_case: str = ""  # IG against the stock /explanations
    predict_case: str = ""  # top-5 predictions against the stock /predictions ("": none)
    served_net: nn.Module | None = None  # `net` through prepare_model (set by subjects())

    @property
    def runs(self) -> nn.Module:
        """The network the server runs."""
        return self.net if self.served_net is None else self.served_net


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
    served: Served,
    contenders: dict[str, Callable[[], torch.Tensor]],
    repeats: int,
    device: Any,
    base: str = "engine",
    references: dict[str, Callable[[], torch.Tensor]] | None = None,
) -> dict[str, Any]:
    """Interleaved latencies, plus answer size, worker timings and agreement with `base` (the
    computation alone in this process), or for a contender named in `references` with the
    answer that function gives (the stock handler's own preprocessing of the image).

    `outside_engine_ms` is each served request's wall time minus the explain (for a prediction:
    the predict) time its worker reported: what serving adds, measured within one request, so
    it does not depend on how fast the model happened to run in that round of a busy machine."""
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
                    "outside_engine": wall_ms - (t.explain_ms or t.predict_ms),
                }
            )
            return out

        return call

    wrapped = {name: recorded(name, fn) for name, fn in contenders.items()}
    own = {name: fn().flatten().float().cpu() for name, fn in (references or {}).items()}
    reference = contenders[base]().flatten().float().cpu()
    agreement = {}
    for name, fn in contenders.items():
        out, against = fn().flatten().float().cpu(), own.get(name, reference)
        # A raw image gets a server-drawn seed and PNG is a picture: nothing to compare.
        comparable = out.shape == against.shape and name != "rest_raw_image"
        agreement[name] = float((out - against).norm() / against.norm()) if comparable else None
    times = interleaved(wrapped, repeats, warmup=0, device=device)
    floor = statistics.median(times[base])
    found = {}
    for name, runs in times.items():
        medians = {key: statistics.median(w[key] for w in worker[name]) for key in worker[name][0]}
        served_here = name != base and (medians["explain"] > 0 or medians["predict"] > 0)
        found[name] = {
            "median_s": statistics.median(runs),
            "runs_s": runs,
            "ratio_to_engine": statistics.median(runs) / floor,
            "overhead_ms": 1000 * (statistics.median(runs) - floor),
            "response_bytes": sizes[name],
            "worker_ms": medians,
            "outside_engine_ms": medians["outside_engine"] if served_here else None,
            # engine alone + what serving adds: the ratio a quiet machine would show
            "ratio_from_outside": 1 + medians["outside_engine"] / (1000 * floor)
            if served_here
            else None,
            "relative_l2_to_engine": agreement[name],
        }
        if name in own:
            found[name]["compared_with"] = f"{base} on the stock handler's preprocessing"
    return found


def smoothgrad_contenders(
    served: Served,
    subject: Subject,
    x: torch.Tensor,
    bounds: tuple[torch.Tensor, torch.Tensor],
    rows: int,
    target: int,
    nt_samples: int,
) -> dict[str, Callable[[], torch.Tensor]]:
    options = {"nt_samples": nt_samples}
    model_name, png = subject.name, subject.png

    def engine() -> torch.Tensor:
        return explain(
            subject.runs,
            x[None],
            target,
            nt_samples=nt_samples,
            nt_samples_batch_size=rows,
            bounds=bounds,
            seed=SEED,
            memory_format=subject.config.memory_format,
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
    served: Served, subject: Subject, stock: str, x: torch.Tensor, stock_x: torch.Tensor, steps: int
) -> tuple[dict[str, Callable[[], torch.Tensor]], dict[str, Callable[[], torch.Tensor]]]:
    """IG from the zero baseline for target 0, as the stock `/explanations` computes it; and
    the reference for the stock answer (our engine on the stock handler's input)."""
    options = {
        "method": pb.METHOD_INTEGRATED_GRADIENTS,
        "nt_type": pb.NT_TYPE_NONE,
        "n_steps": steps,
    }
    json_f32, grpc_f16 = (
        request(subject.png, 0, options, "float32"),
        request(subject.png, 0, options, "float16"),
    )
    rows = subject.config.nt_samples_batch_size

    def engine_on(inputs: torch.Tensor, as_served: bool = True) -> torch.Tensor:
        """Our IG of `inputs`: the network as we serve it, or as the stock handler runs it."""
        return explain(
            subject.runs if as_served else subject.net,
            inputs[None],
            0,
            method="integrated_gradients",
            nt_type="none",
            n_steps=steps,
            nt_samples_batch_size=rows,
            memory_format=subject.config.memory_format if as_served else "contiguous",
        )[0]

    name, png = subject.name, subject.png
    contenders: dict[str, Callable[[], torch.Tensor]] = {
        "engine": lambda: engine_on(x),
        "stock_torchserve_captum_ig": lambda: served.stock(stock, png),
        "rest_json_float32": lambda: served.rest_json(name, json_f32),
        "grpc_float16": lambda: served.grpc(name, grpc_f16),
    }
    return contenders, {"stock_torchserve_captum_ig": lambda: engine_on(stock_x, False)}


def predict_contenders(
    served: Served, subject: Subject, stock: str, x: torch.Tensor, stock_x: torch.Tensor
) -> tuple[dict[str, Callable[[], torch.Tensor]], dict[str, Callable[[], torch.Tensor]]]:
    """Top-k predictions through both handlers (REST and gRPC) and by the model in this
    process. Each answer becomes a vector over all classes, zero outside its top k, so that a
    class or a probability that differs both show in the relative L2."""
    name, png, top_k = subject.name, subject.png, 5  # the stock handler's top-k
    labels = categories()
    index_of = {label: i for i, label in reversed(list(enumerate(labels)))}
    asked = pb.Request(input=pb.Input(image=png), explain=False, top_k=top_k)

    def vector(pairs: list[tuple[int, float]]) -> torch.Tensor:
        out = torch.zeros(len(labels))
        for index, probability in pairs:
            out[index] = probability
        return out

    def forward_on(inputs: torch.Tensor, as_served: bool = True) -> torch.Tensor:
        net = subject.runs if as_served else subject.net
        with torch.no_grad():
            scores = torch.softmax(net(inputs[None]).float(), dim=1)[0].cpu()
        probabilities, indices = scores.topk(top_k)
        return vector(list(zip(indices.tolist(), probabilities.tolist(), strict=True)))

    def ours(response: pb.Response) -> torch.Tensor:
        return vector([(c.index, c.probability) for c in response.top_k])

    def theirs(scores: dict[str, float]) -> torch.Tensor:
        # keys are labels with an index_to_name.json in the archive, class indices without
        return vector([(index_of[k] if k in index_of else int(k), p) for k, p in scores.items()])

    contenders: dict[str, Callable[[], torch.Tensor]] = {
        "forward_alone": lambda: forward_on(x),
        "rest_raw_predict": lambda: ours(served.predict_rest(name, png)),
        "grpc_predict": lambda: ours(served.predict_grpc(name, asked)),
        "stock_torchserve_rest_predict": lambda: theirs(served.stock_predict_rest(stock, png)),
        "stock_torchserve_grpc_predict": lambda: theirs(served.stock_predict_grpc(stock, png)),
    }
    reference = {n: lambda: forward_on(stock_x, False) for n in contenders if "stock" in n}
    return contenders, reference


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


def _case(subject: Subject, about: str, x: torch.Tensor, results: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": subject.model,
        "request": about,
        "input_bytes": len(subject.png),
        "model_input": list(x.shape),
        "nt_samples_batch_size": subject.config.nt_samples_batch_size,
        "results": results,
    }


def serve_and_measure(
    served: Served,
    subjects: list[Subject],
    device: torch.device,
    nt_samples: int,
    repeats: int,
) -> dict[str, Any]:
    cases: dict[str, Any] = {}
    for subject in subjects:
        x, bounds = model_input(subject.config, subject.png, device)
        with torch.no_grad():
            target = int(subject.net(x[None]).argmax())
        rows = subject.config.nt_samples_batch_size
        found = smoothgrad_contenders(served, subject, x, bounds, rows, target, nt_samples)
        about = f"SmoothGrad of the gradient, nt_samples {nt_samples}, sigma 0.15"
        results = measure(served, found, repeats, device)
        cases[subject.name] = {**_case(subject, about, x, results), "target": target}
        if subject.stock is not None:
            cases.update(peer_cases(served, subject, subject.stock, x, device, repeats))
        medians = {k: round(v["median_s"], 4) for k, v in cases[subject.name]["results"].items()}
        print(subject.name, json.dumps(medians), flush=True)
    return cases


def peer_cases(
    served: Served,
    subject: Subject,
    stock: str,
    x: torch.Tensor,
    device: torch.device,
    repeats: int,
) -> dict[str, Any]:
    """The stock handler beside ours: IG (its `/explanations`) and, where asked, predictions."""
    # What the stock handler feeds the model: torchvision's resize, crop and normalisation.
    stock_x = imagenet_tensor(Image.open(io.BytesIO(subject.png)))[0].to(device)
    differs = float((stock_x - x).norm() / x.norm())
    contenders, references = peer_contenders(served, subject, stock, x, stock_x, 15)
    about = "IntegratedGradients n_steps 15, no noise, target 0"
    results = measure(served, contenders, repeats, device, references=references)
    cases = {subject.peer_case: _case(subject, about, x, results)}
    if subject.predict_case:
        contenders, references = predict_contenders(served, subject, stock, x, stock_x)
        about = "top-5 predictions (softmax); the engine here is the forward alone"
        results = measure(served, contenders, repeats, device, "forward_alone", references)
        cases[subject.predict_case] = _case(subject, about, x, results)
    for case in cases.values():
        case["stock_input_relative_l2"] = differs  # torchvision's input against our server's
    return cases


def subjects(
    models: list[str], device: torch.device, weights: dict[str, Path], defaults: dict[str, Any]
) -> list[Subject]:
    found = []
    if "resnet18" in models:
        config = parse_config(resnet_config(defaults)["smoothexplain"])
        net = resnet(weights["resnet18"], device)
        png = png_bytes(256)
        found.append(Subject("resnet18", "se_resnet18", config, net, png, "ts_resnet18", "peer_ig"))
    if "shapes" in models:
        config = parse_config(yaml.safe_load(DEMO_CONFIG.read_text())["smoothexplain"])
        net = load_model(ARTIFACTS).to(device).requires_grad_(False)
        found.append(Subject("shapes", "shapes", config, net, png_bytes(64)))
    if LITE0 in models:
        config = parse_config(lite0_config(defaults, weights[LITE0].name)["smoothexplain"])
        net = lite0(device)
        peer = ("ts_lite0", "peer_ig_lite0", "predict_lite0")
        found.append(Subject(LITE0, "se_lite0", config, net, cat_png(), *peer))
    # The in-process engine runs what the server runs (BatchNorm folded, its layout).
    return [replace(s, served_net=prepare_model(s.net, s.config)[0]) for s in found]


def worker_threads(log_dir: Path) -> dict[str, int]:
    """Torch threads of each of our workers, from the line our handler logs when it is ready."""
    log = log_dir / "model_log.log"
    text = log.read_text(errors="replace") if log.is_file() else ""
    found = re.findall(r"smoothexplain model (\S+) ready on \S+ \(torch threads (\d+)", text)
    return {model: int(count) for model, count in found}


def run(args: argparse.Namespace, device: torch.device, root: Path) -> dict[str, Any]:
    nt_samples, repeats = (4, 1) if args.smoke else (50, args.repeats)
    defaults = {"nt_samples": nt_samples}
    models = args.models or list(ARCHIVES)
    weights = build(root / "store", root / "scratch", defaults, ARTIFACTS, models)
    served_models = subjects(models, device, weights, defaults)
    archives = {name: f"{name}.mar" for model in models for name in ARCHIVES[model]}
    overrides = {"number_of_gpu": "0"} if device.type == "cpu" else {}
    started_on = machine(device)
    with (
        TorchServeInstance(
            root / "store", archives, root / "ts", config_overrides=overrides
        ) as server,
        grpc.insecure_channel(
            server.grpc_target, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        ) as channel,
    ):
        served = Served(server, channel)
        cases = serve_and_measure(served, served_models, device, nt_samples, repeats)
        threads = worker_threads(server.log_dir)
    return {
        "benchmark": "serving overhead",
        "machine": started_on,
        "settings": {
            "torchserve": "0.12.0, one worker per model, batchSize 1",
            "torchserve_keys": TORCHSERVE_KEYS,
            "seed": SEED,
            "repeats": repeats,
            # Workers inherit OMP_NUM_THREADS like this process; ours log their torch threads.
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "worker_torch_threads": threads,
            "smoke": args.smoke,
        },
        "cases": cases,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_device_arguments(parser)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (≥ 3)")
    parser.add_argument(
        "--models",
        nargs="+",
        choices=list(ARCHIVES),
        default=None,
        help="a subset of the models (default: all); its tables replace the same tables of an "
        "existing result file and the others are kept",
    )
    args = parser.parse_args()
    device = resolve_device(args)
    keep_freed_memory()  # as our TorchServe workers do (model config default)
    # Short path: TorchServe's worker sockets live under it (108-byte Unix socket limit).
    with tempfile.TemporaryDirectory(prefix="sebench-") as tmp:
        record = run(args, device, Path(tmp))
    path = output_path(args, "serving", device)
    write(path, merge_into(path, record) if args.models else record)


if __name__ == "__main__":
    main()
