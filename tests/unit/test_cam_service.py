"""Class-activation maps through the data plane: the served EfficientNet-Lite0 (BatchNorm folded
at load, its CAMs read on the model as defined), the default layer found at load and echoed,
the refusals as 400s naming their field, the model-config's cam_reshape on a tiny ViT."""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest
import torch
from torch import nn

from smoothexplain import explain
from smoothexplain._proto.smoothexplain.v1 import explain_pb2 as pb
from smoothexplain.demo.efficientnet import EfficientNetLite, pretrained_weights
from smoothexplain.engine.spec import CamReshape
from smoothexplain.protocol.errors import InvalidArgument
from smoothexplain.serving.codec import message_to_tensor, tensor_to_message
from smoothexplain.serving.config import ServingConfig, parse_config
from smoothexplain.serving.models import prepare_model
from smoothexplain.serving.service import ExplainService, Incoming

from .analytic import small_cnn
from .cam_models import tiny_vit
from .guided_models import quiet_script

SIDE = 64  # Lite0 takes any side; small keeps the test short
LITE = parse_config({"model_class": "m:M", "preprocess": {"size": SIDE, "resize": SIDE}})


@cache
def _lite0() -> nn.Module:
    model = EfficientNetLite("efficientnet-lite0")
    model.load_state_dict(torch.load(pretrained_weights(), weights_only=True))
    return model.eval().requires_grad_(False)


@cache
def _folded() -> nn.Module:
    folded, said = prepare_model(_lite0(), LITE)
    assert said.startswith("BatchNorm2d folded")
    return folded


@pytest.fixture(scope="module")
def served() -> ExplainService:
    return ExplainService(_folded(), LITE, {}, torch.device("cpu"), "lite0", layers=_lite0())


def _request(x: torch.Tensor, **options: Any) -> pb.Request:
    return pb.Request(
        input=pb.Input(tensor=tensor_to_message(x)),
        explain=True,
        target=285,
        options=pb.ExplainOptions(seed=4, nt_samples=3, **options),
    )


def _grpc(service: ExplainService, *requests: pb.Request) -> list[pb.Response]:
    answers = service.handle([Incoming(r.SerializeToString(), from_grpc=True) for r in requests])
    return [pb.Response.FromString(a.body) for a in answers]  # type: ignore[arg-type]


def _x(seed: int = 0, side: int = SIDE) -> torch.Tensor:
    return torch.randn(3, side, side, generator=torch.Generator().manual_seed(seed))


def test_the_folded_model_has_no_block_15_to_read() -> None:
    """Why CAMs run on the unfolded model: fx traced through the blocks' F.conv2d calls."""
    folded = _folded()
    with pytest.raises(InvalidArgument, match="not a module of the model that runs"):
        explain(folded, _x()[None], 285, method="grad_cam", layer="_blocks.15", nt_type="none")


def test_served_lite0_cam_is_the_unfolded_models(served: ExplainService) -> None:
    x = _x()
    cam, gradient = _grpc(
        served,
        _request(x, method=pb.METHOD_GRAD_CAM_PLUS_PLUS, layer="_blocks.15"),
        _request(x, method=pb.METHOD_GRADIENT),
    )
    assert not cam.HasField("error") and not gradient.HasField("error")
    ours = message_to_tensor(cam.attribution)
    expected = explain(
        _lite0(),
        x[None],
        285,
        method="grad_cam_plus_plus",
        layer="_blocks.15",
        nt_samples=3,
        seed=4,
        bounds=served.bounds,
    )
    assert isinstance(expected, torch.Tensor) and ours.shape == (1, SIDE, SIDE)
    # the rows run channels_last on the server: kernel rounding only
    assert float((ours - expected[0]).norm() / expected.norm()) < 1e-3
    assert cam.options.layer == "_blocks.15"
    assert cam.options.cam_resolution == pb.CAM_RESOLUTION_INPUT
    assert not gradient.options.HasField("layer")  # CAM options are echoed for CAMs only


def test_the_default_layer_is_found_at_load_and_echoed(served: ExplainService) -> None:
    assert served.default_layer == "_bn1"  # the shared `_swish` runs twice, the pool is 1 x 1
    (answer,) = _grpc(
        served, _request(_x(1), method=pb.METHOD_GRAD_CAM, cam_resolution=pb.CAM_RESOLUTION_LAYER)
    )
    assert answer.options.layer == "_bn1"
    assert tuple(answer.attribution.shape) == (1, SIDE // 32, SIDE // 32)


@pytest.mark.parametrize(
    ("layer", "says"),
    [("_blocks.99", "_blocks.9"), ("_swish", "runs 2 times"), ("_fc", "per row")],
)
def test_unusable_layers_are_400_naming_options_layer(
    served: ExplainService, layer: str, says: str
) -> None:
    bad, good = _grpc(
        served,
        _request(_x(), method=pb.METHOD_GRAD_CAM, layer=layer),
        _request(_x(), method=pb.METHOD_GRAD_CAM),
    )
    assert bad.error.http_status == 400 and bad.error.field == "options.layer"
    assert says in bad.error.message
    assert not good.HasField("error")


def test_guided_grad_cam_at_layer_resolution_is_400(served: ExplainService) -> None:
    (answer,) = _grpc(
        served,
        _request(_x(), method=pb.METHOD_GUIDED_GRAD_CAM, cam_resolution=pb.CAM_RESOLUTION_LAYER),
    )
    assert answer.error.field == "options.cam_resolution"


def _tiny(model: nn.Module, **more: Any) -> ExplainService:
    config = parse_config({"model_class": "m:M", "preprocess": {"size": 8, "resize": 8}, **more})
    return ExplainService(model, config, {}, torch.device("cpu"))


def test_torchscript_cams_are_400_naming_options_method() -> None:
    service = _tiny(quiet_script(small_cnn()))
    assert service.default_layer is None
    (answer,) = _grpc(service, _request(_x(side=8), method=pb.METHOD_GRAD_CAM))
    assert answer.error.http_status == 400 and answer.error.field == "options.method"
    assert "TorchScript" in answer.error.message


def test_model_config_cam_reshape_and_layer_default_on_a_vit() -> None:
    layer = "encoder.layers.encoder_layer_1.ln_1"
    config: dict[str, Any] = {
        "preprocess": {"size": 32, "resize": 32},
        "cam_reshape": {"grid": [4, 4], "skip_tokens": 1},
        "defaults": {"layer": layer},
    }
    service = _tiny(tiny_vit(), **config)
    assert service.config.cam_reshape == CamReshape((4, 4), 1)
    request = _request(_x(side=32), method=pb.METHOD_LAYER_GRADIENT_X_ACTIVATION)
    request.target = 1
    (answer,) = _grpc(service, request)
    assert not answer.HasField("error") and answer.options.layer == layer
    expected = explain(
        tiny_vit(),
        _x(side=32)[None],
        1,
        method="layer_gradient_x_activation",
        layer=layer,
        cam_reshape=config["cam_reshape"],
        nt_samples=3,
        seed=4,
        bounds=service.bounds,
    )
    torch.testing.assert_close(message_to_tensor(answer.attribution), expected[0])


def test_a_bad_cam_reshape_is_refused_at_load() -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_config({"model_class": "m:M", "cam_reshape": {"grid": [0, 4]}})
    assert caught.value.field == "cam_reshape.grid"
    assert isinstance(parse_config({"model_class": "m:M"}), ServingConfig)


def test_a_cam_of_a_tensor_the_model_cannot_take_is_400_naming_its_shape(
    served: ExplainService,
) -> None:
    """Lite0's census forward fails on 8 x 8 (its pools): the request's shape, not a 500."""
    bad, good = _grpc(
        served,
        _request(_x(side=8), method=pb.METHOD_GRAD_CAM),
        _request(_x(), method=pb.METHOD_GRAD_CAM),
    )
    assert bad.error.http_status == 400 and bad.error.field == "input.tensor.shape"
    assert "(3, 8, 8)" in bad.error.message
    assert not good.HasField("error")


def _pyramid() -> nn.Module:
    """Three convolutions with a pool between each: at 4 x 4 the last ones are 1 x 1."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for channels_in, channels_out in ((3, 4), (4, 4), (4, 4)):
        layers += [nn.Conv2d(channels_in, channels_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
    layers[-1] = nn.AdaptiveAvgPool2d(1)
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(4, 5)).eval()


def test_the_default_layer_follows_the_input_shape_as_explain_finds_it() -> None:
    service = _tiny(_pyramid(), preprocess={"size": 16, "resize": 16})
    assert service.default_layer == "7"  # the last ReLU: 4 x 4 at the served 16 x 16
    small = _x(side=4)
    request = _request(small, method=pb.METHOD_GRAD_CAM, cam_resolution=pb.CAM_RESOLUTION_LAYER)
    request.target = 1
    (answer,) = _grpc(service, request)
    assert not answer.HasField("error"), answer.error.message
    assert answer.options.layer == "4"  # at 4 x 4 the ReLU after the first pool is 2 x 2
    expected = explain(
        _pyramid(), small[None], 1, method="grad_cam", nt_samples=3, seed=4,
        cam_resolution="layer", bounds=service.bounds,
    )  # fmt: skip
    assert tuple(answer.attribution.shape) == tuple(expected.shape[1:]) == (1, 2, 2)


def test_cam_options_asked_of_an_input_method_are_400_naming_them() -> None:
    layer = "encoder.layers.encoder_layer_1.ln_1"
    config: dict[str, Any] = {
        "preprocess": {"size": 32, "resize": 32},
        "cam_reshape": {"grid": [4, 4], "skip_tokens": 1},
        "defaults": {"layer": layer},  # a CAM default: input methods never see it
    }
    service = _tiny(tiny_vit(), **config)
    x = _x(side=32)
    requests = [
        _request(x, method=pb.METHOD_GRADIENT, layer=layer),
        _request(x, method=pb.METHOD_GRADIENT, cam_resolution=pb.CAM_RESOLUTION_LAYER),
        _request(x, method=pb.METHOD_GRADIENT),
    ]
    for request in requests:
        request.target = 1
    named, resolution, plain = _grpc(service, *requests)
    assert named.error.http_status == 400 and named.error.field == "options.layer"
    assert "grad_cam" in named.error.message
    assert resolution.error.field == "options.cam_resolution"
    assert not plain.HasField("error") and not plain.options.HasField("layer")
    with pytest.raises(InvalidArgument) as caught:
        explain(small_cnn(), torch.zeros(1, 3, 8, 8), 0, layer="net.0", nt_samples=2)
    assert caught.value.field == "layer"
