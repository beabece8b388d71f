"""Engine benchmark: SmoothGrad on ResNet-18 (random weights, 224², CPU) side by side with the
bare forward+backward floor, Captum's NoiseTunnel(Saliency(abs=False)) and a per-sample loop."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch
import torchvision
from captum.attr import NoiseTunnel, Saliency
from common import interleaved, machine, summarise, write

from smoothexplain import explain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/results/engine-cpu.json"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--nt-samples", type=int, default=50)
    parser.add_argument("--batch", type=int, default=10, help="nt_samples_batch_size (rows)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", module="captum")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    target, stdev, n, b = 3, 0.15, args.nt_samples, args.batch
    # The floor's rows exist before the clock starts: it pays for nothing but the model.
    noisy_rows = [
        (x + stdev * torch.randn(b, 3, 224, 224)).requires_grad_(True) for _ in range(n // b)
    ]

    def floor() -> None:
        for rows in noisy_rows:
            torch.autograd.grad(model(rows)[:, target].sum(), rows)

    def engine() -> None:
        explain(model, x, target, nt_samples=n, nt_samples_batch_size=b, stdevs=stdev, seed=1)

    def captum() -> None:
        NoiseTunnel(Saliency(model)).attribute(
            x,
            nt_type="smoothgrad",
            nt_samples=n,
            nt_samples_batch_size=b,
            stdevs=stdev,
            target=target,
            abs=False,
        )

    def per_sample_loop() -> None:
        total = torch.zeros_like(x)
        for _ in range(n):
            row = (x + stdev * torch.randn_like(x)).requires_grad_(True)
            total += torch.autograd.grad(model(row)[0, target], row)[0]
        _ = total / n

    times = interleaved(
        {
            "floor": floor,
            "engine": engine,
            "captum_noise_tunnel": captum,
            "per_sample_loop": per_sample_loop,
        },
        repeats=args.repeats,
    )
    record = {
        "benchmark": "engine-cpu smoothgrad gradient",
        "machine": machine(),
        "settings": {
            "model": "resnet18 (random weights)",
            "input": [1, 3, 224, 224],
            "nt_samples": n,
            "nt_samples_batch_size": b,
            "stdevs": stdev,
            "repeats": args.repeats,
        },
        "results": summarise(times, "floor"),
    }
    write(args.out, record)
    for name, row in record["results"].items():
        print(f"{name:22s} median {row['median_s']:.3f} s   ×floor {row['ratio_to_floor']:.3f}")


if __name__ == "__main__":
    main()
