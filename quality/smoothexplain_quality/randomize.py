"""Cascading model-parameter randomisation (Adebayo et al., 2018, "Sanity checks").

The model is cut into *stages* — the blocks of its top-level `nn.Sequential` / `nn.ModuleList`
containers and its other parameterised children, in forward order. Step k re-initialises the
last k stages (from the logits down), leaving the rest trained; :func:`cascade_groups` takes
several stages per step, for deep networks. An explanation that still looks the same after the
top layers are random does not explain the model.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["cascade", "cascade_groups", "stages"]


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Parameterised stages of `model` in forward (registration) order, with their names."""
    found: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential | nn.ModuleList):
            found += [(f"{name}.{n}", c) for n, c in child.named_children() if _has_parameters(c)]
        elif _has_parameters(child):
            found.append((name, child))
    return found


def _reinitialise(module: nn.Module, generator_seed: int) -> None:
    # reset_parameters draws from torch's global RNG: fork it so the caller's stream is untouched
    # and the randomised weights depend only on the seed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(generator_seed)
        for sub in module.modules():
            reset = getattr(sub, "reset_parameters", None)
            if callable(reset):
                reset()
            # BatchNorm's running statistics are buffers, not parameters: reset them too.
            reset_stats = getattr(sub, "reset_running_stats", None)
            if callable(reset_stats):
                reset_stats()


def cascade(model: nn.Module, seed: int = 0) -> list[tuple[str, nn.Module]]:
    """Copies of `model` with the last 1, 2, … stages re-initialised, each named by its lowest
    randomised stage; the original is not modified. Every copy is in eval mode."""
    return cascade_groups(model, [[name] for name, _ in reversed(stages(model))], seed)


def cascade_groups(
    model: nn.Module, groups: Sequence[Sequence[str]], seed: int = 0
) -> list[tuple[str, nn.Module]]:
    """Copies of `model` with groups[0], then also groups[1], … re-initialised (list the groups
    from the logits down), each named by the last stage of its newest group."""
    copies: list[tuple[str, nn.Module]] = []
    current = copy.deepcopy(model)
    depth = 0
    for group in groups:
        current = copy.deepcopy(current)
        for name in group:
            _reinitialise(current.get_submodule(name), seed + depth)
            depth += 1
        copies.append((group[-1], current.eval()))
    return copies
