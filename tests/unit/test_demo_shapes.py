"""Unit tests for the demo data generator, network and training helpers (no full training)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from smoothexplain.demo import (
    CLASS_NAMES,
    INDEX_TO_NAME_FILE,
    MEAN,
    META_FILE,
    NUM_CLASSES,
    STD,
    WEIGHTS_FILE,
    ShapesDataset,
    ShapesNet,
    input_bounds,
    load_model,
    make_dataset,
    normalize,
    render_batch,
    render_sample,
)
from smoothexplain.demo.train import TrainConfig, evaluate, state_dict_sha256, train


@pytest.fixture(scope="module")
def small_set() -> ShapesDataset:
    return make_dataset(300, seed=7)


def test_class_names_are_distinct() -> None:
    assert len(set(CLASS_NAMES)) == NUM_CLASSES
    assert 6 <= NUM_CLASSES <= 8


def test_same_seed_gives_identical_tensors() -> None:
    a, b = make_dataset(40, seed=3), make_dataset(40, seed=3)
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.labels, b.labels)
    assert torch.equal(a.masks, b.masks)


def test_different_seed_gives_different_tensors() -> None:
    a, b = make_dataset(40, seed=3), make_dataset(40, seed=4)
    assert not torch.equal(a.images, b.images)
    assert not torch.equal(a.masks, b.masks)


def test_prefix_is_independent_of_count() -> None:
    short, long = make_dataset(10, seed=5), make_dataset(300, seed=5)
    assert torch.equal(short.images, long.images[:10])
    assert torch.equal(short.labels, long.labels[:10])


def _numpy_global_state() -> tuple[bytes, int]:
    state = np.random.get_state(legacy=False)["state"]
    return bytes(state["key"].tobytes()), int(state["pos"])


def test_generation_leaves_global_rng_untouched() -> None:
    np_state = _numpy_global_state()
    torch_state = torch.get_rng_state()
    make_dataset(8, seed=1)
    render_sample(0, seed=1)
    assert _numpy_global_state() == np_state
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_shapes_dtypes_and_ranges(small_set: ShapesDataset) -> None:
    assert len(small_set) == 300
    assert small_set.images.shape == (300, 3, 64, 64)
    assert small_set.images.dtype == torch.float32
    assert small_set.labels.shape == (300,)
    assert small_set.labels.dtype == torch.int64
    assert small_set.masks.shape == (300, 64, 64)
    assert small_set.masks.dtype == torch.bool
    assert float(small_set.images.min()) >= 0.0
    assert float(small_set.images.max()) <= 1.0
    assert int(small_set.labels.min()) >= 0
    assert int(small_set.labels.max()) < NUM_CLASSES


def test_size_is_a_parameter() -> None:
    data = make_dataset(5, seed=0, size=40)
    assert data.images.shape == (5, 3, 40, 40)
    assert data.masks.shape == (5, 40, 40)
    assert bool(data.masks.flatten(1).any(dim=1).all())


def test_empty_dataset() -> None:
    data = make_dataset(0, seed=0)
    assert len(data) == 0
    assert data.images.shape == (0, 3, 64, 64)


def test_every_class_present(small_set: ShapesDataset) -> None:
    counts = torch.bincount(small_set.labels, minlength=NUM_CLASSES)
    assert bool((counts > 0).all())


def test_masks_are_non_empty_and_inside_frame(small_set: ShapesDataset) -> None:
    areas = small_set.masks.flatten(1).sum(dim=1)
    assert int(areas.min()) > 20
    # Shapes are placed fully inside the frame, so the border never belongs to the object.
    masks = small_set.masks
    border = masks[:, 0, :] | masks[:, -1, :] | masks[:, :, 0] | masks[:, :, -1]
    assert not bool(border.any())


def test_masks_cover_the_drawn_object(small_set: ShapesDataset) -> None:
    images, masks = small_set.images, small_set.masks.unsqueeze(1)
    inside = (images * masks).flatten(2).sum(2) / masks.flatten(2).sum(2)
    outside = (images * ~masks).flatten(2).sum(2) / (~masks).flatten(2).sum(2)
    # The object is one flat colour plus small noise, so its pixels barely vary ...
    inside_std = torch.stack(
        [images[i][:, small_set.masks[i]].std(dim=1) for i in range(len(small_set))]
    )
    assert float(inside_std.max()) < 0.1
    # ... and its colour is chosen to stand out from the background.
    assert float((inside - outside).norm(dim=1).min()) > 0.15


def test_render_batch_honours_labels() -> None:
    rng = np.random.default_rng(0)
    labels = np.arange(NUM_CLASSES)
    images, masks = render_batch(rng, labels, size=48)
    assert images.shape == (NUM_CLASSES, 48, 48, 3)
    assert masks.shape == (NUM_CLASSES, 48, 48)
    assert bool(masks.reshape(NUM_CLASSES, -1).any(axis=1).all())


def test_render_batch_rejects_bad_labels() -> None:
    with pytest.raises(ValueError, match="labels"):
        render_batch(np.random.default_rng(0), [NUM_CLASSES])


def test_render_sample_is_deterministic_png() -> None:
    image, mask = render_sample(2, seed=11)
    again, mask_again = render_sample(2, seed=11)
    assert image.mode == "RGB"
    assert image.size == (64, 64)
    assert mask.shape == (64, 64)
    assert mask.dtype == np.bool_
    assert mask.any()
    assert np.array_equal(np.asarray(image), np.asarray(again))
    assert np.array_equal(mask, mask_again)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    buffer.seek(0)
    assert np.array_equal(np.asarray(Image.open(buffer).convert("RGB")), np.asarray(image))


def test_render_sample_rejects_bad_label() -> None:
    with pytest.raises(ValueError, match="label"):
        render_sample(NUM_CLASSES, seed=0)


def test_normalisation_constants_and_bounds() -> None:
    low, high = input_bounds()
    assert low == pytest.approx([(0.0 - m) / s for m, s in zip(MEAN, STD, strict=True)])
    assert high == pytest.approx([(1.0 - m) / s for m, s in zip(MEAN, STD, strict=True)])
    corners = normalize(torch.stack([torch.zeros(3, 2, 2), torch.ones(3, 2, 2)]))
    assert corners[0, :, 0, 0].tolist() == pytest.approx(low)
    assert corners[1, :, 0, 0].tolist() == pytest.approx(high)


def test_net_output_shape() -> None:
    torch.manual_seed(0)
    model = ShapesNet(NUM_CLASSES).eval()
    with torch.no_grad():
        logits = model(torch.zeros(2, 3, 64, 64))
    assert logits.shape == (2, NUM_CLASSES)
    assert logits.dtype == torch.float32


def test_net_has_inplace_relu() -> None:
    model = ShapesNet(NUM_CLASSES)
    assert any(isinstance(m, torch.nn.ReLU) and m.inplace for m in model.modules())


def test_input_gradient_flows_through_net() -> None:
    torch.manual_seed(0)
    model = ShapesNet(NUM_CLASSES).eval()
    inputs = torch.randn(1, 3, 64, 64, requires_grad=True)
    (grad,) = torch.autograd.grad(model(inputs)[0, 0], inputs)
    assert grad.shape == inputs.shape
    assert float(grad.abs().sum()) > 0.0


def test_few_training_steps_decrease_loss(small_set: ShapesDataset) -> None:
    torch.manual_seed(0)
    model = ShapesNet(NUM_CLASSES, width=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    inputs, labels = normalize(small_set.images[:64]), small_set.labels[:64]
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(model(inputs), labels)
        optimizer.zero_grad()
        torch.autograd.backward(loss)
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]


def test_tiny_train_writes_loadable_artifacts(tmp_path: Path) -> None:
    config = TrainConfig(train_count=128, heldout_count=32, epochs=1, batch_size=64, width=4)
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    report = train(tmp_path, seed=3, config=config)
    # train() must not leak its determinism/thread settings into the caller.
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    assert 0.0 <= report.heldout_accuracy <= 1.0
    state = torch.load(tmp_path / WEIGHTS_FILE, weights_only=True)
    assert isinstance(state, dict)
    names = json.loads((tmp_path / INDEX_TO_NAME_FILE).read_text())
    assert names == {str(i): name for i, name in enumerate(CLASS_NAMES)}
    meta = json.loads((tmp_path / META_FILE).read_text())
    assert meta["num_classes"] == NUM_CLASSES
    assert meta["mean"] == list(MEAN)
    assert meta["input_low"] == pytest.approx(list(input_bounds()[0]))
    assert meta["heldout_seed"] == report.heldout_seed != report.seed
    model = load_model(tmp_path)
    assert state_dict_sha256(model) == report.state_dict_sha256
    heldout = make_dataset(config.heldout_count, report.heldout_seed)
    assert evaluate(model, heldout)[0] == pytest.approx(report.heldout_accuracy)
