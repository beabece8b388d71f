"""Every bit of a seed reaches the noise: seeds equal in their low 32 bits still differ."""

from __future__ import annotations

import pytest
import torch
from google.protobuf import json_format

from smoothexplain import explain
from smoothexplain._proto.smoothexplain.v1 import explain_pb2 as pb
from smoothexplain.engine import noise
from smoothexplain.engine.noise import make_generator
from smoothexplain.serving.codec import message_to_tensor, tensor_to_message
from smoothexplain.serving.config import parse_config
from smoothexplain.serving.service import ExplainService, Incoming

from .analytic import small_cnn

CPU = torch.device("cpu")
# Pairs that the low 32 bits alone could not tell apart (torch's manual_seed on CPU).
COLLIDING = [(1, 2**32 + 1), (7, 7 + 2**40), (0, 2**62), (2**31, 2**31 + 2**32)]
CASES = [
    {"method": "gradient", "noise_sampling": "iid"},
    {"method": "gradient", "noise_sampling": "antithetic"},
    {"method": "gradient", "noise_sampling": "qmc"},
    {"method": "integrated_gradients", "ig_sampling": "joint", "n_steps": 4},
    {"method": "integrated_gradients", "ig_sampling": "grid", "n_steps": 4},
]


def test_the_state_layout_check_holds_on_this_torch() -> None:
    assert noise._MT_LAYOUT_HOLDS  # else every CPU seed would fall back to 32 folded bits


@pytest.mark.parametrize(("low", "high"), COLLIDING)
def test_seeds_equal_in_their_low_32_bits_draw_different_noise(low: int, high: int) -> None:
    a = torch.randn(64, generator=make_generator(low, CPU))
    b = torch.randn(64, generator=make_generator(high, CPU))
    assert not torch.equal(a, b)
    assert torch.equal(a, torch.randn(64, generator=make_generator(low, CPU)))  # repeatable


def test_uniform_and_integer_draws_use_the_whole_seed_too() -> None:
    first, second = make_generator(3, CPU), make_generator(3 + 2**32, CPU)
    assert not torch.equal(torch.rand(16, generator=first), torch.rand(16, generator=second))
    assert not torch.equal(
        torch.randint(0, 2**62, (4,), generator=first),
        torch.randint(0, 2**62, (4,), generator=second),
    )


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c.values())))
def test_explanations_seeded_2_to_the_32_apart_differ_and_each_repeats(
    case: dict[str, object],
) -> None:
    model = small_cnn()
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    run = {"nt_samples": 6, "stdevs": 0.3, **case}
    one = explain(model, x, 1, seed=1, **run)  # type: ignore[arg-type]
    again = explain(model, x, 1, seed=1, **run)  # type: ignore[arg-type]
    far = explain(model, x, 1, seed=2**32 + 1, **run)  # type: ignore[arg-type]
    assert torch.equal(one, again)
    assert not torch.allclose(one, far)


def test_without_the_layout_the_high_bits_are_folded_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(noise, "_MT_LAYOUT_HOLDS", False)
    a = torch.randn(32, generator=make_generator(1, CPU))
    b = torch.randn(32, generator=make_generator(2**32 + 1, CPU))
    assert not torch.equal(a, b)


def _served_map(service: ExplainService, seed: int, grpc_transport: bool) -> torch.Tensor:
    x = torch.linspace(-1, 1, 3 * 8 * 8).view(3, 8, 8)
    request = pb.Request(
        input=pb.Input(tensor=tensor_to_message(x)),
        explain=True,
        options=pb.ExplainOptions(seed=seed, nt_samples=4),
    )
    request.target = 1
    if grpc_transport:
        (answer,) = service.handle([Incoming(request.SerializeToString(), from_grpc=True)])
        response = pb.Response.FromString(answer.body)  # type: ignore[arg-type]
    else:
        body = json_format.MessageToJson(request).encode()
        (answer,) = service.handle([Incoming(body, explain_path=True)])
        response = json_format.Parse(answer.body, pb.Response())
    assert answer.status == 200 and response.seed == seed
    return message_to_tensor(response.attribution)


@pytest.mark.parametrize("grpc_transport", [True, False], ids=["grpc", "rest"])
def test_served_seeds_2_to_the_32_apart_give_different_maps(grpc_transport: bool) -> None:
    config = parse_config(
        {
            "model_class": "tests.unit.analytic:small_cnn",
            "preprocess": {"size": 8, "resize": 8, "mean": [0.5] * 3, "std": [0.25] * 3},
        }
    )
    service = ExplainService(small_cnn(), config, {}, CPU)
    one = _served_map(service, 1, grpc_transport)
    assert torch.equal(one, _served_map(service, 1, grpc_transport))
    assert not torch.allclose(one, _served_map(service, 2**32 + 1, grpc_transport))
    assert not torch.allclose(one, _served_map(service, 2**62 + 1, grpc_transport))
