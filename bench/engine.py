"""Engine overhead: smoothed gradient and integrated gradients by our engine, side by side with
the bare forward+backward floor on the same rows and Captum's NoiseTunnel, every contender once
per round, round after round. Models: ResNet-18/50 (random weights, a random 224² input, target
3) and the pretrained EfficientNet-Lite0 on the cat photograph (target: its top-1 class).

CPU (default): ResNet-18, ResNet-50 and EfficientNet-Lite0; gradient with nt_samples 50, IG with
n_steps 5 and nt_samples 50 (250 rows a call), smoothed Grad-CAM at the model's default layer
with nt_samples 50 (against Captum's NoiseTunnel(LayerGradCam)), in passes of 10 rows. CUDA:
ResNet-50 and EfficientNet-Lite0 with TF32, TF32 + channels_last and bf16 autocast + channels_last
(cudnn.benchmark on), nt_samples 50, IG n_steps 10, passes of 50 rows. `--models` runs a subset
and merges its rows into an existing result file (the other rows keep their own date/machine).
A machine without Captum or the Lite0 weights package (a CUDA machine with its own Python and
no package registry: bench/gpu_selfcontained.sh) runs without that contender or model and
records what it lacked under settings.missing.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from common import (
    Prepared,
    add_device_arguments,
    interleaved,
    machine,
    merge_into,
    output_path,
    random_model,
    resolve_device,
    summarise,
    write,
)
from lite0 import LITE0, LITE0_PACKAGES, WEIGHTS, cat_tensor, categories, input_about, lite0
from torch import nn

from smoothexplain import ExplainJob, Scheduler, explain, fold_batchnorm, make_spec
from smoothexplain.engine.cam_layers import CamLayers

STDEV = 0.15  # absolute noise σ (Captum takes a scalar stdev only)
TARGET = 3  # of the random-weight ResNets; EfficientNet-Lite0 explains its top-1 class
MODELS = {"cpu": ("resnet18", "resnet50", LITE0), "cuda": ("resnet50", LITE0)}


CASE_KEY = ("model", "method", "variant")  # a result row that a later run replaces


@dataclass(frozen=True)
class Case:
    model: str
    method: str  # "gradient", "integrated_gradients" or "grad_cam"
    nt_samples: int
    n_steps: int  # 1 for gradient
    batch: int  # rows per forward + backward pass (a multiple of n_steps)
    size: int
    variant: str  # "fp32", "tf32", "tf32+channels_last", "bf16+channels_last"

    @property
    def rows(self) -> int:
        return self.nt_samples * self.n_steps


def on_gpu(args: argparse.Namespace, device: torch.device) -> bool:
    return device.type == "cuda" or getattr(args, "fallback", False)


def have(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def missing() -> list[str]:
    """What this machine lacks of the benchmark's optional parts."""
    lacks = [] if have("captum") else ["captum: no Captum NoiseTunnel contender"]
    lacks += [f"{p}: no EfficientNet-Lite0 rows" for p in LITE0_PACKAGES if not have(p)]
    return lacks


def cases(args: argparse.Namespace, device: torch.device) -> list[Case]:
    found = []
    if on_gpu(args, device):
        for model in MODELS["cuda"]:
            for variant in ("tf32", "tf32+channels_last", "bf16+channels_last"):
                found.append(Case(model, "gradient", 50, 1, 50, 224, variant))
                found.append(Case(model, "integrated_gradients", 50, 10, 50, 224, variant))
    else:
        for model in MODELS["cpu"]:
            found.append(Case(model, "gradient", 50, 1, 10, 224, "fp32"))
            found.append(Case(model, "integrated_gradients", 50, 5, 10, 224, "fp32"))
            found.append(Case(model, "grad_cam", 50, 1, 10, 224, "fp32"))
    found = [c for c in found if args.models is None or c.model in args.models]
    found = [c for c in found if args.methods is None or c.method in args.methods]
    found = [c for c in found if c.model != LITE0 or all(map(have, LITE0_PACKAGES))]
    if args.smoke:  # the same code paths at toy sizes (ResNet-50 cases become duplicates)
        found = [
            replace(
                c,
                model="resnet18" if c.model.startswith("resnet") else c.model,
                nt_samples=4,
                n_steps=min(c.n_steps, 2),
                batch=2 * min(c.n_steps, 2),
                size=32,
            )
            for c in found
        ]
    return list(dict.fromkeys(found))


def subject(case: Case, device: torch.device) -> tuple[nn.Module, torch.Tensor, dict[str, Any]]:
    """The prepared model, its input and the target explained, with what they are."""
    channels_last = "channels_last" in case.variant
    autocast = torch.bfloat16 if case.variant.startswith("bf16") else None
    if case.model == LITE0:
        net = lite0(device, channels_last)
        x = cat_tensor(case.size).to(device)
        with torch.no_grad():  # in fp32, so that every variant explains the same class
            target = int(net(x).argmax())
        model = Prepared(net, autocast, channels_last)
        about = {
            "weights": WEIGHTS,
            "input": input_about(case.size),
            "target_label": categories()[target],
        }
        return model, x, {"target": target, **about}
    model = Prepared(random_model(case.model, device, channels_last), autocast, channels_last)
    torch.manual_seed(0)
    x = torch.randn(1, 3, case.size, case.size, device=device)
    return model, x, {"target": TARGET, "weights": "random (seed 0)", "input": "randn (seed 0)"}


def floor_rows(case: Case, x: torch.Tensor) -> list[torch.Tensor]:
    """The rows every contender runs, made before the clock starts: the floor pays only for
    the model. IG rows are sample-major (x' = 0 + α_k (x̃ − 0)), as the engine lays them out."""
    gen = torch.Generator(x.device).manual_seed(1)
    per_pass = case.batch // case.n_steps
    alphas = torch.linspace(0.1, 1.0, case.n_steps, device=x.device).view(1, -1, 1, 1, 1)
    chunks = []
    for start in range(0, case.nt_samples, per_pass):
        count = min(per_pass, case.nt_samples - start)
        noise = torch.randn((count, *x.shape[1:]), generator=gen, device=x.device)
        noisy = x + STDEV * noise
        rows = noisy if case.n_steps == 1 else (alphas * noisy.unsqueeze(1)).flatten(0, 1)
        chunks.append(rows.contiguous())
    return chunks


def contenders(
    case: Case, model: nn.Module, x: torch.Tensor, target: int, nt_samples: int
) -> dict[str, Callable[[], object]]:
    rows = floor_rows(case, x)[: max(1, nt_samples * case.n_steps // case.batch)]
    ig = case.method == "integrated_gradients"
    cam = case.method == "grad_cam"
    layer = _cam_layer(model, x) if cam else None

    def floor() -> None:
        for chunk in rows:
            leaf = chunk.requires_grad_(True)
            torch.autograd.grad(model(leaf)[:, target].sum(), leaf)

    def captum() -> None:
        from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

        if layer is not None:
            captum_cam()
            return
        tunnel = NoiseTunnel(IntegratedGradients(model) if ig else Saliency(model))
        extra = {"n_steps": case.n_steps} if ig else {"abs": False}
        tunnel.attribute(
            x,
            nt_type="smoothgrad",
            nt_samples=nt_samples,
            nt_samples_batch_size=case.batch // case.n_steps,
            stdevs=STDEV,
            target=target,
            **extra,
        )

    def captum_cam() -> None:
        from captum.attr import LayerAttribution, LayerGradCam, NoiseTunnel

        assert layer is not None
        tunnel = NoiseTunnel(LayerGradCam(model, model.get_submodule(layer)))
        small = tunnel.attribute(
            x,
            nt_type="smoothgrad",
            nt_samples=nt_samples,
            nt_samples_batch_size=case.batch,
            stdevs=STDEV,
            target=target,
            relu_attributions=True,
        )
        LayerAttribution.interpolate(small, x.shape[2:], interpolate_mode="bilinear")

    def per_sample_loop() -> None:
        total = torch.zeros_like(x)
        for _ in range(nt_samples):
            row = (x + STDEV * torch.randn_like(x)).requires_grad_(True)
            total += torch.autograd.grad(model(row)[0, target], row)[0]
        _ = total / nt_samples

    def engine_in(layout: str, net: nn.Module = model) -> Callable[[], object]:
        def run() -> None:
            explain(
                net,
                x,
                target,
                method=case.method,
                nt_samples=nt_samples,
                nt_samples_batch_size=case.batch,
                stdevs=STDEV,
                n_steps=case.n_steps,
                seed=1,
                memory_format=layout,
                layer=layer,
            )

        return run

    engine = engine_in("contiguous")
    # `auto` as a server runs it: one long-lived scheduler that measured the layout once.
    spec = make_spec(
        method=case.method, nt_samples=nt_samples, stdevs=STDEV, n_steps=case.n_steps, layer=layer
    )
    # Its own copy of the model: the layout it gives the weights must not reach the others.
    lasting = Scheduler(copy.deepcopy(model), case.batch, memory_format="auto")

    def engine_auto() -> None:
        lasting.run([ExplainJob(inputs=x[0], target=target, spec=spec, seed=1)])

    found: dict[str, Callable[[], object]] = {"floor": floor, "engine": engine}
    if have("captum"):
        found["captum_noise_tunnel"] = captum
    if case.variant == "fp32":  # NCHW model: the layouts against the NCHW floor (issue 17)
        found["engine_channels_last"] = engine_in("channels_last")
        found["engine_auto"] = engine_auto
        # What the server runs by default: BatchNorm folded at load, channels_last (CAMs:
        # on the model as defined, whose layers folding would trace away).
        served = model if cam else fold_batchnorm(model).model
        found["engine_served"] = engine_in("channels_last", served)
    if case.method == "gradient" and case.model == "resnet18" and case.variant == "fp32":
        found["per_sample_loop"] = per_sample_loop
    return found


def _cam_layer(model: nn.Module, x: torch.Tensor) -> str:
    """The layer the engine reads by default (ResNet: layer4; Lite0: _bn1, the head's)."""
    layer = CamLayers(model, model).census(x[0]).default()
    assert layer is not None
    return layer


def run_case(case: Case, device: torch.device, repeats: int, warm: bool) -> dict[str, object]:
    model, x, about = subject(case, device)
    target = about["target"]
    # Warm-up: one pass per contender (kernel selection, allocator, lazy imports); a full run
    # of ResNet-50 would cost a whole round.
    warmups = contenders(case, model, x, target, case.batch // case.n_steps)
    for fn in warmups.values() if warm else []:
        fn()
    cpu: dict[str, list[float]] = {}
    timed = contenders(case, model, x, target, case.nt_samples)
    times = interleaved(timed, repeats, 0, device, cpu)
    result = summarise(times, "floor", cpu if device.type == "cpu" else None)
    for name, row in result.items():
        print(
            f"{case.model} {case.method} {case.variant}: {name:20s} "
            f"median {row['median_s']:.3f} s  ×floor {row['ratio_to_floor']:.3f} "
            f"(CPU time ×{row.get('cpu_ratio_to_floor', float('nan')):.3f})",
            flush=True,
        )
    layouts = _layout_change(case, model, x, target) if case.variant == "fp32" else {}
    return {
        **asdict(case),
        **about,
        "rows": case.rows,
        "repeats": repeats,
        "results": result,
        **layouts,
    }


def _layout_change(case: Case, model: nn.Module, x: torch.Tensor, target: int) -> dict[str, Any]:
    """How far channels_last, and channels_last with BatchNorm folded (the server's default),
    move the map from NCHW (same rows and seed), and what `auto` chose for this model and
    shape."""
    cam = case.method == "grad_cam"
    kw: dict[str, Any] = {
        "layer": _cam_layer(model, x) if cam else None,
        "method": case.method,
        "nt_samples": case.nt_samples,
        "nt_samples_batch_size": case.batch,
        "stdevs": STDEV,
        "n_steps": case.n_steps,
        "seed": 1,
    }
    nchw = explain(model, x, target, **kw)
    nhwc = explain(model, x, target, memory_format="channels_last", **kw)
    folded = fold_batchnorm(model)
    served_model = model if cam else folded.model  # as engine_served
    served = explain(served_model, x, target, memory_format="channels_last", **kw)
    assert isinstance(nchw, torch.Tensor) and isinstance(nhwc, torch.Tensor)
    assert isinstance(served, torch.Tensor)
    chooser = Scheduler(model, case.batch, memory_format="auto")
    chosen = chooser.choose_layout(x[0])
    model.to(memory_format=torch.contiguous_format)
    zero = not bool(nchw.any())  # e.g. a Grad-CAM whose ReLU leaves nothing (random weights)
    return {
        "channels_last_rel_l2": None if zero else float((nhwc - nchw).norm() / nchw.norm()),
        "served_rel_l2": None if zero else float((served - nchw).norm() / nchw.norm()),
        "map_all_zero": zero,
        "max_abs_change": float(max((nhwc - nchw).abs().max(), (served - nchw).abs().max())),
        "batchnorms_folded": folded.count,
        "auto_chose": chosen.value,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_device_arguments(parser)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (≥ 3)")
    parser.add_argument(
        "--models",
        nargs="+",
        choices=MODELS["cpu"],
        default=None,
        help="a subset of the models (default: all of the device's); its rows replace the same "
        "rows of an existing result file and the others are kept",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=("gradient", "integrated_gradients", "grad_cam"),
        default=None,
        help="a subset of the methods (default all); merged into the result file like --models",
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore", module="captum")
    device = resolve_device(args)
    repeats = 1 if args.smoke else args.repeats
    record = {
        "benchmark": "engine overhead",
        "machine": machine(device),
        "settings": {
            "stdevs": STDEV,
            "nt_type": "smoothgrad",
            "ig_rule": "gausslegendre (Captum's default)",
            "smoke": args.smoke,
            "missing": missing(),
        },
        "cases": [run_case(c, device, repeats, not args.smoke) for c in cases(args, device)],
    }
    path = output_path(args, "engine", device)
    subset = args.models or args.methods
    write(path, merge_into(path, record, CASE_KEY) if subset else record)


if __name__ == "__main__":
    main()
