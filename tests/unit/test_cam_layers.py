"""The `layer` option: its default, the refusals (unknown, shared, token layers without a grid,
TorchScript, a function), token layers laid out by `cam_reshape` on a tiny ViT, and the seed
and chunking rules of the input methods."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from smoothexplain import InvalidArgument, explain
from smoothexplain.engine.cam_layers import CamLayers

from .analytic import small_cnn
from .cam_models import SharedActivation, tiny_vit
from .guided_models import quiet_script


def _refused(model: object, x: torch.Tensor, **options: object) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        explain(model, x, 0, method="grad_cam", nt_type="none", **options)  # type: ignore[arg-type]
    return caught.value


def test_default_layer_is_the_last_4d_module_that_runs_once_and_is_not_1x1() -> None:
    model = small_cnn()
    census = CamLayers(model, model).census(torch.zeros(3, 8, 8))
    assert census.default() == "4"  # the 2x2 pool, after the second ReLU
    assert census.usable(None)[-2:] == ["3", "4"]
    twice = SharedActivation()
    shared = CamLayers(twice, twice).census(torch.zeros(3, 8, 8))
    assert shared.default() == "conv2"  # `act` runs twice


def test_the_default_is_what_naming_it_gives() -> None:
    model, x = small_cnn(), torch.randn(2, 3, 8, 8)
    default = explain(model, x, 1, method="grad_cam", nt_samples=3, seed=5)
    named = explain(model, x, 1, method="grad_cam", nt_samples=3, seed=5, layer="4")
    torch.testing.assert_close(default, named, rtol=0, atol=0)


def test_unknown_layer_names_the_nearest_usable_ones() -> None:
    error = _refused(small_cnn(), torch.randn(1, 3, 8, 8), layer="33")
    assert error.field == "layer" and "nearest usable layers: 3" in error.message


def test_a_module_run_twice_is_refused() -> None:
    error = _refused(SharedActivation(), torch.randn(1, 3, 8, 8), layer="act")
    assert error.field == "layer" and "runs 2 times" in error.message


def test_a_layer_without_a_map_is_refused() -> None:
    error = _refused(small_cnn(), torch.randn(1, 3, 8, 8), layer="6")  # the Linear
    assert error.field == "layer" and "per row" in error.message


def test_torchscript_and_functions_are_refused_naming_method() -> None:
    scripted = quiet_script(small_cnn())
    assert _refused(scripted, torch.randn(1, 3, 8, 8)).field == "method"
    model = small_cnn()
    assert _refused(lambda rows: model(rows), torch.randn(1, 3, 8, 8)).field == "method"


def test_guided_grad_cam_at_layer_resolution_and_flat_inputs_are_refused() -> None:
    with pytest.raises(InvalidArgument) as caught:
        explain(
            small_cnn(),
            torch.randn(1, 3, 8, 8),
            0,
            method="guided_grad_cam",
            cam_resolution="layer",
        )
    assert caught.value.field == "cam_resolution"
    flat = nn.Sequential(nn.Unflatten(1, (3, 2, 2)), small_cnn())
    error = _refused(flat, torch.randn(1, 12), layer="1.1")
    assert error.field == "cam_resolution"


def _smoothed(x: torch.Tensor, method: str, chunk: int | None = None) -> torch.Tensor:
    out = explain(
        small_cnn(),
        x,
        2,
        method=method,
        layer="3",
        nt_type="smoothgrad_sq",
        nt_samples=5,
        stdevs=0.3,
        seed=11,
        nt_samples_batch_size=chunk,
    )
    assert isinstance(out, torch.Tensor)
    return out


@pytest.mark.parametrize("method", ["grad_cam_plus_plus", "guided_grad_cam"])
def test_chunk_size_and_batch_mates_do_not_change_a_smoothed_cam(method: str) -> None:
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(4))
    whole = _smoothed(x, method)
    for chunk in (1, 7):
        torch.testing.assert_close(_smoothed(x, method, chunk), whole, rtol=1e-6, atol=1e-7)
    # input i of a call draws from (seed, i): input 0 alone is input 0 of the pair
    torch.testing.assert_close(_smoothed(x[:1], method)[0], whole[0], rtol=1e-6, atol=1e-7)


def test_hooks_are_removed_and_the_model_is_left_as_it_was() -> None:
    model = small_cnn(inplace=True)
    x = torch.randn(2, 3, 8, 8)
    before = model(x)
    explain(model, x, 0, method="guided_grad_cam", nt_samples=2, seed=1, layer="1")
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    torch.testing.assert_close(model(x), before)


VIT_LAYER = "encoder.layers.encoder_layer_1.ln_1"
GRID = {"grid": [4, 4], "skip_tokens": 1}


def test_a_token_layer_is_laid_out_on_its_grid() -> None:
    model, x = tiny_vit(), torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ours = explain(
        model,
        x,
        1,
        method="layer_gradient_x_activation",
        nt_type="none",
        layer=VIT_LAYER,
        cam_reshape=GRID,
        cam_resolution="layer",
    )
    read: list[torch.Tensor] = []
    layer = model.get_submodule(VIT_LAYER)
    handle = layer.register_forward_hook(lambda _m, _a, out: read.append(out))
    rows = x.clone().requires_grad_(True)
    score = model(rows)[:, 1].sum()
    handle.remove()
    (grad,) = torch.autograd.grad(score, read[0])
    tokens = (grad * read[0]).sum(dim=2)[:, 1:]  # (rows, 16): the class token dropped
    expected = tokens.reshape(2, 1, 4, 4)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-7)
    smoothed = explain(
        model,
        x,
        1,
        method="layer_gradient_x_activation",
        nt_samples=4,
        seed=2,
        stdevs=0.2,
        layer=VIT_LAYER,
        cam_reshape=GRID,
    )
    assert isinstance(smoothed, torch.Tensor) and smoothed.shape == (2, 1, 32, 32)
    assert float(smoothed.abs().sum()) > 0


def test_a_token_layer_needs_its_grid() -> None:
    model, x = tiny_vit(), torch.randn(1, 3, 32, 32)
    error = _refused(model, x, layer=VIT_LAYER)
    assert error.field == "layer" and "cam_reshape" in error.message
    error = _refused(model, x, layer=VIT_LAYER, cam_reshape={"grid": [3, 3], "skip_tokens": 1})
    assert "17 tokens" in error.message
    with pytest.raises(InvalidArgument) as caught:
        explain(model, x, 0, method="grad_cam", cam_reshape={"grid": [4]})
    assert caught.value.field == "cam_reshape.grid"
