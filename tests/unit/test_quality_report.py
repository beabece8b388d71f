"""The report pipeline end to end on a tiny plan: every study runs and the report renders."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from smoothexplain.demo import META_FILE, NUM_CLASSES, WEIGHTS_FILE, ShapesNet
from smoothexplain_quality.grid import Settings
from smoothexplain_quality.run import Plan, build

TINY = Plan(
    images=6,
    figure_images=2,
    sanity_images=2,
    sanity_bases=("grad",),
    sweep_images=2,
    convergence_images=2,
    convergence_samples=(4, 8),
    reference_samples=8,
    repeats=1,
    sigmas=(0.15,),
    confidences=(0.95,),
    settings=Settings(nt_samples=2, ig_nt_samples=1, ig_steps=2),
    image_size=32,
    training=(32, 1, 2),
)


def _demo_dir(root: Path) -> Path:
    torch.manual_seed(0)
    root.mkdir()
    torch.save(ShapesNet(NUM_CLASSES, width=2).state_dict(), root / WEIGHTS_FILE)
    meta = {"num_classes": NUM_CLASSES, "width": 2, "heldout_accuracy": 0.5, "train_seconds": 1}
    (root / META_FILE).write_text(json.dumps(meta))
    return root


@pytest.fixture
def one_thread() -> Iterator[None]:
    # Tiny models: a second thread only adds synchronisation (and spins on a busy machine).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.usefixtures("one_thread")
def test_report_runs_every_study_and_renders(tmp_path: Path) -> None:
    out = build(TINY, tmp_path / "docs", tmp_path / "cache", _demo_dir(tmp_path / "demo"))
    assert out == tmp_path / "docs" / "quality.md"
    results = json.loads((tmp_path / "cache" / "results.json").read_text())
    grid = results["per_model"]["resnet"]["grid"]
    assert len(grid["ig_w/ag"]["sparseness"]) == 6
    assert set(results["per_model"]["demo"]["sanity"]) == {
        "classifier",
        "features.3",
        "features.2",
        "features.1",
        "features.0",
    }
    assert all(0.0 <= v <= 1.0 for v in grid["grad/sg"]["mass"])
    text = (tmp_path / "docs" / "quality.md").read_text()
    for heading in ("Sparseness (Quantus)", "Ground truth", "Sanity checks", "Convergence"):
        assert heading in text
    assert "| A-IG(W) | 0.6327 |" in text  # the paper's figure next to ours
    figures = sorted(p.name for p in (tmp_path / "docs" / "figures").iterdir())
    assert figures == [
        "quality-convergence.png",
        "quality-maps-demo.png",
        "quality-maps-resnet.png",
        "quality-sanity.png",
    ]
    for name in figures:
        with Image.open(tmp_path / "docs" / "figures" / name) as image:
            assert image.width > 200 and image.height > 200
    with np.load(tmp_path / "cache" / "maps.npz") as maps:
        assert maps["demo:grad/avg"].shape == (2, 32, 32)
    # The report can be rendered again from the stored results alone.
    (tmp_path / "docs" / "quality.md").unlink()
    build(TINY, tmp_path / "docs", tmp_path / "cache", tmp_path / "absent", render_only=True)
    assert (tmp_path / "docs" / "quality.md").read_text() == text
