"""The report's second architecture, its model cache and cascading randomisation."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from smoothexplain.demo import NUM_CLASSES, ShapesNet
from smoothexplain.demo.train import TrainConfig
from smoothexplain_quality.grid import Cell
from smoothexplain_quality.randomize import cascade, stages
from smoothexplain_quality.resnet import ShapesResNet
from smoothexplain_quality.zoo import VARIANTS, Variant, load_variant


def _same(a: nn.Module, b: nn.Module) -> bool:
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    return all(torch.equal(x, y) for x, y in pairs)


def test_resnet_shapes_and_gradient_flow() -> None:
    torch.manual_seed(0)
    model = ShapesResNet(NUM_CLASSES, width=4).eval()
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    logits = model(x)
    assert logits.shape == (2, NUM_CLASSES)
    (grad,) = torch.autograd.grad(logits[:, 1].sum(), x)
    assert bool((grad != 0).any())


def test_stages_of_the_demo_network_in_forward_order() -> None:
    names = [name for name, _ in stages(ShapesNet(NUM_CLASSES, width=2))]
    assert names == ["features.0", "features.1", "features.2", "features.3", "classifier"]


def test_stages_of_the_resnet() -> None:
    names = [name for name, _ in stages(ShapesResNet(NUM_CLASSES, width=2))]
    assert names == ["features.0", "features.1", "features.2", "features.3", "classifier"]


def test_cascade_randomises_from_the_top_and_leaves_the_model_alone() -> None:
    torch.manual_seed(0)
    model = ShapesNet(NUM_CLASSES, width=2).eval()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    copies = cascade(model, seed=3)
    assert [name for name, _ in copies] == [
        "classifier",
        "features.3",
        "features.2",
        "features.1",
        "features.0",
    ]
    for depth, (_, changed) in enumerate(copies, start=1):
        assert not changed.training
        randomised = [name for name, _ in stages(model)][-depth:]
        for name, stage in stages(changed):
            assert _same(stage, model.get_submodule(name)) is (name not in randomised)
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())
    again = cascade(model, seed=3)
    assert all(_same(a, b) for (_, a), (_, b) in zip(copies, again, strict=True))


def test_cell_labels_follow_the_paper() -> None:
    assert Cell("grad", "plain").label == "Grad"
    assert Cell("grad", "ag").label == "AG"
    assert Cell("ixg", "sg").label == "S-GI"
    assert Cell("ig_b", "ag").label == "A-IG(B)"
    assert Cell("grad", "avg").label == "adaptive VarGrad"


def test_variants_cover_the_report() -> None:
    assert set(VARIANTS) == {"demo", "resnet", "nonoise", "randlabels"}
    assert VARIANTS["nonoise"].config.noise_max == 0.0
    assert VARIANTS["randlabels"].shuffle_labels


def test_variant_is_trained_once_then_loaded(tmp_path: Path) -> None:
    tiny = Variant(
        "tiny",
        "tiny",
        architecture="resnet",
        config=TrainConfig(
            train_count=64, heldout_count=16, image_size=16, epochs=1, batch_size=32, width=2
        ),
        shuffle_labels=True,
    )
    model, meta = load_variant(tiny, tmp_path, tmp_path / "unused")
    assert isinstance(model, ShapesResNet) and not model.training
    assert meta["shuffle_labels"] is True and meta["architecture"] == "resnet"
    stamp = (tmp_path / "tiny" / "meta.json").stat().st_mtime_ns
    again, meta_again = load_variant(tiny, tmp_path, tmp_path / "unused")
    assert (tmp_path / "tiny" / "meta.json").stat().st_mtime_ns == stamp  # not retrained
    assert _same(model, again) and meta_again == json.loads(json.dumps(meta))
