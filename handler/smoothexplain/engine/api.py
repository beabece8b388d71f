"""`explain()`: the public, Captum-vocabulary entry point over the engine's scheduler."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence

import torch

from ..protocol.errors import InvalidArgument
from .cpu import SlowPrecisionWarning, slow_precision_reason
from .layout import LayoutSnapshot
from .noise import job_seed
from .scheduler import ExplainJob, Scheduler
from .spec import MAX_SEED, make_spec

__all__ = ["explain"]


def _check_inputs(inputs: object) -> torch.Tensor:
    if not isinstance(inputs, torch.Tensor):
        raise InvalidArgument(
            f"inputs must be a torch.Tensor, got {type(inputs).__name__}", field="inputs"
        )
    if not inputs.is_floating_point() or inputs.dim() < 2 or inputs.shape[0] < 1:
        raise InvalidArgument(
            "inputs must be a floating-point batch tensor of shape (N, ...) with N >= 1, "
            f"got dtype {inputs.dtype} and shape {tuple(inputs.shape)}",
            field="inputs",
        )
    if not bool(torch.isfinite(inputs).all()):
        raise InvalidArgument("inputs must not contain NaN or Inf", field="inputs")
    return inputs.detach()


def _check_targets(target: object, count: int) -> list[int]:
    if isinstance(target, torch.Tensor):
        if target.dim() > 1 or target.is_floating_point() or target.is_complex():
            raise InvalidArgument(
                "target tensor must be a 0-D or 1-D integer tensor", field="target"
            )
        target = target.tolist()
    values = [target] * count if isinstance(target, int) else target
    if not isinstance(values, Sequence) or isinstance(values, str | bytes):
        raise InvalidArgument(
            f"target must be an int, a list of ints or a 1-D tensor, got {type(target).__name__}",
            field="target",
        )
    if len(values) != count:
        raise InvalidArgument(
            f"target must have one entry per input ({count}), got {len(values)}", field="target"
        )
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidArgument(
                f"target entries must be integers >= 0, got {value!r}", field="target"
            )
    return [int(v) for v in values]


def _check_baselines(baselines: object, inputs: torch.Tensor) -> list[torch.Tensor | None]:
    count = inputs.shape[0]
    if baselines is None:
        return [None] * count
    if isinstance(baselines, int | float) and not isinstance(baselines, bool):
        return [torch.full_like(inputs[0], float(baselines))] * count
    if not isinstance(baselines, torch.Tensor):
        raise InvalidArgument("baselines must be None, a number or a tensor", field="baselines")
    base = baselines.detach().to(inputs.device, inputs.dtype)
    try:
        if base.dim() == inputs.dim() and base.shape[0] == count:
            return [b.expand_as(inputs[0]) for b in base]
        return [base.expand_as(inputs[0])] * count
    except RuntimeError:
        raise InvalidArgument(
            f"baselines of shape {tuple(base.shape)} do not broadcast to inputs "
            f"{tuple(inputs.shape)} (give one per input or one for all)",
            field="baselines",
        ) from None


def _check_seed(seed: object) -> int:
    if seed is None:
        # Drawn from torch's global generator, so torch.manual_seed still makes runs repeatable.
        return int(torch.randint(0, 2**62, (1,)).item())
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise InvalidArgument(
            f"seed must be None or an integer in [0, {MAX_SEED}], got {seed!r}", field="seed"
        )
    return seed


def explain(
    model: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor,
    *,
    method: str = "gradient",
    nt_type: str = "smoothgrad",
    noise: str = "gaussian",
    nt_samples: int = 50,
    nt_samples_batch_size: int | None = None,
    stdevs: float | None = None,
    sigma: float = 0.15,
    bounds: tuple[float, float] | tuple[torch.Tensor, torch.Tensor] | None = None,
    confidence: float = 0.95,
    seed: int | None = None,
    baselines: float | torch.Tensor | None = None,
    n_steps: int = 50,
    ig_rule: str = "gausslegendre",
    return_convergence_delta: bool = False,
    ig_sampling: str = "grid",
    noise_sampling: str = "iid",
    tolerance: float | None = None,
    precision: str = "fp32",
    memory_budget: int | None = None,
    memory_format: str = "contiguous",
    layer: str | None = None,
    cam_resolution: str = "input",
    cam_reshape: Mapping[str, object] | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Smoothed attributions of `model`'s score for `target` at each input (docs/api.md).

    Returns a float32 tensor shaped like `inputs` (class-activation maps: (N, 1, H, W) of the
    input, or of `layer` with `cam_resolution="layer"`), or `(attributions, delta)` with `delta` of
    shape (N,) when `return_convergence_delta` is set. Raises `InvalidArgument` (a ValueError)
    naming the argument for any bad value.
    """
    if not callable(model):
        raise InvalidArgument("model must be callable (an nn.Module or a function)", field="model")
    spec = make_spec(
        method=method,
        nt_type=nt_type,
        noise=noise,
        nt_samples=nt_samples,
        stdevs=stdevs,
        sigma=sigma,
        bounds=bounds,
        confidence=confidence,
        n_steps=n_steps,
        ig_rule=ig_rule,
        return_convergence_delta=return_convergence_delta,
        ig_sampling=ig_sampling,
        noise_sampling=noise_sampling,
        tolerance=tolerance,
        precision=precision,
        layer=layer,
        cam_resolution=cam_resolution,
        cam_reshape=cam_reshape,
    )
    scheduler = Scheduler(  # checks its arguments
        model, nt_samples_batch_size, memory_budget, memory_format=memory_format
    )
    if slow := slow_precision_reason(
        spec.precision, inputs.device if isinstance(inputs, torch.Tensor) else torch.device("cpu")
    ):
        warnings.warn(slow, SlowPrecisionWarning, stacklevel=2)
    x = _check_inputs(inputs)
    targets = _check_targets(target, x.shape[0])
    bases = _check_baselines(baselines, x)
    base_seed = _check_seed(seed)
    jobs = [
        ExplainJob(
            inputs=x[i],
            target=targets[i],
            spec=spec,
            seed=job_seed(base_seed, i),
            baseline=bases[i],
        )
        for i in range(x.shape[0])
    ]
    snapshot = LayoutSnapshot(model)  # a channels_last run converts the weights
    try:
        results = scheduler.run(jobs)
    finally:
        snapshot.restore()
    attributions = torch.stack([r.attribution for r in results]).to(x.device)
    if not return_convergence_delta:
        return attributions
    deltas = torch.tensor(
        [r.convergence_delta for r in results], dtype=torch.float32, device=x.device
    )
    return attributions, deltas
