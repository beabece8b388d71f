"""The same requests computed in this process by the engine: what every served answer must equal.

Reads the demo model's trained weights and its model-config.yaml, so the preprocessing, bounds
and defaults are the ones the server uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml

from smoothexplain import explain
from smoothexplain._proto.smoothexplain.v1 import explain_pb2 as pb
from smoothexplain.demo import load_model
from smoothexplain.serving.codec import image_to_tensor, tensor_from_message
from smoothexplain.serving.config import parse_config

__all__ = ["REPO_ROOT", "LocalEngine"]

REPO_ROOT = Path(__file__).resolve().parents[3]

_ENUMS: tuple[tuple[str, Any, str], ...] = (
    ("method", pb.Method, "METHOD_"),
    ("nt_type", pb.NtType, "NT_TYPE_"),
    ("noise", pb.Noise, "NOISE_"),
    ("ig_rule", pb.IgRule, "IG_RULE_"),
)
_NUMBERS = ("nt_samples", "stdevs", "sigma", "confidence", "n_steps")


class LocalEngine:
    """The demo model and its serving config, for direct computations of served requests."""

    def __init__(
        self,
        artifacts: Path = REPO_ROOT / "artifacts" / "demo",
        model_config: Path = REPO_ROOT / "deploy" / "model-config.yaml",
    ) -> None:
        raw = yaml.safe_load(model_config.read_text(encoding="utf-8"))["smoothexplain"]
        self.config = parse_config(raw)
        self.model = load_model(artifacts)
        low, high = self.config.preprocess.bounds()
        self.bounds = (torch.tensor(low).view(-1, 1, 1), torch.tensor(high).view(-1, 1, 1))

    def inputs(self, request: pb.Request) -> torch.Tensor:
        pre, limits = self.config.preprocess, self.config.limits
        if request.input.WhichOneof("source") == "tensor":
            return tensor_from_message(request.input.tensor, pre, limits)
        return image_to_tensor(request.input.image, pre, limits)

    def probabilities(self, request: pb.Request) -> torch.Tensor:
        with torch.no_grad():
            scores = self.model(self.inputs(request)[None])
        return torch.softmax(scores.float(), dim=1)[0]

    def attribution(self, request: pb.Request, target: int, seed: int) -> torch.Tensor:
        """The attribution `request` asks for, with the target and seed the server used."""
        options, defaults = request.options, self.config.defaults.values
        kwargs: dict[str, Any] = {}
        for name, enum, prefix in _ENUMS:
            value = getattr(options, name)
            chosen = enum.Name(value).removeprefix(prefix).lower() if value else None
            kwargs[name] = chosen or defaults[name]
        for name in _NUMBERS:
            if options.HasField(name):
                kwargs[name] = getattr(options, name)
            elif name in defaults:
                kwargs[name] = defaults[name]
        if options.HasField("baseline"):
            kwargs["baselines"] = options.baseline
        x = self.inputs(request)
        result = explain(self.model, x[None], target, seed=seed, bounds=self.bounds, **kwargs)
        assert isinstance(result, torch.Tensor)
        return result[0]
