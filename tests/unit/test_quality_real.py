"""The pretrained-network part on a tiny plan: it measures, caches, renders and re-renders."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from smoothexplain.engine.noise import adaptive_sigma
from smoothexplain_quality.networks import imagenet_bounds, load_network
from smoothexplain_quality.photos import PHOTOS, load_photo
from smoothexplain_quality.real import REAL_QUICK, RealPlan, cascade_steps
from smoothexplain_quality.run import build

TINY = RealPlan(
    networks=("lite0",),
    photos=("chelsea",),
    figure_photos=("chelsea",),
    ours=replace(REAL_QUICK.ours, nt_samples=2, ig_nt_samples=2, ig_steps=2),
    paper=replace(REAL_QUICK.paper, nt_samples=2, ig_nt_samples=2, ig_steps=2),
    curve_steps=1,
    random_orders=1,
    sanity_keys=("grad/plain", "grad/ag"),
    sanity_samples=1,
    blocks_per_step=16,
)


def test_every_photo_loads_offline_from_its_package() -> None:
    sizes = {name: load_photo(name).size for name in PHOTOS}
    assert len(sizes) == 8 and "motorcycle_right" not in sizes
    assert sizes["chelsea"] == (451, 300)
    assert all(load_photo(name).mode == "RGB" for name in ("grace_hopper", "china"))


def test_the_papers_eq_13_is_our_formula_at_c_0_975() -> None:
    low, high = imagenet_bounds()
    x = torch.linspace(-2.0, 2.5, 3 * 4 * 4).view(1, 3, 4, 4)
    distance = torch.minimum((x - low).abs(), (x - high).abs())
    paper = distance / (math.sqrt(2) * torch.special.erfinv(torch.tensor((1 + 0.95) / 2)))
    ours = adaptive_sigma(x, low, high, TINY.paper.confidence)
    torch.testing.assert_close(ours, paper)


def test_the_cascade_covers_every_stage_of_efficientnet_once() -> None:
    model = load_network("lite0")
    steps = cascade_steps(model, 4)
    names = [name for step in steps for name in step]
    assert steps[0] == ["_fc"] and steps[-1] == ["_bn0", "_conv_stem"]
    assert len(names) == len(set(names)) == 16 + 5
    for name in names:
        model.get_submodule(name)


@pytest.fixture
def single_thread() -> Iterator[None]:
    # The benchmarks share this machine: one thread keeps the test from competing for both.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.usefixtures("single_thread")
def test_real_part_measures_renders_and_rerenders_alone(tmp_path: Path) -> None:
    docs, cache = tmp_path / "docs", tmp_path / "cache"
    docs.mkdir()
    shapes = "# Explanation quality: AdaptGrad against SmoothGrad\n\n## Setup\n\nthe shapes part"
    (docs / "quality.md").write_text(shapes + "\n")
    out = build(None, docs, cache, tmp_path / "demo", real=TINY)
    real = json.loads((cache / "real.json").read_text())
    lite0 = real["per_network"]["lite0"]
    assert lite0["top1"][0]["name"] == "Egyptian cat"
    assert len(lite0["ours"]["ig_w/ag"]["deletion"]) == 1
    assert "grad/plain" not in lite0["paper"] and "gbp/sg" in lite0["paper"]
    assert set(lite0["sanity"]) == {"_fc", "_conv_head", "_blocks.0", "_conv_stem"}
    text = out.read_text()
    assert text.startswith(shapes + "\n\n# Part 2")  # no shapes cache: the old part is kept
    for heading in ("## 8. Sparseness", "## 9. Faithfulness", "## 10. Sanity", "## 11. What"):
        assert heading in text
    assert "Inception-v3" in text and "0.975" in text and "Stefan van der Walt" in text
    assert (docs / "figures" / "quality-photos-lite0.png").stat().st_size > 0
    build(None, docs, cache, tmp_path / "demo", render_only=True)
    assert (docs / "quality.md").read_text() == text  # re-rendering keeps both parts as they were
    (docs / "quality.md").unlink()
    build(None, docs, cache, tmp_path / "demo", render_only=True)
    assert "is not measured here" in (docs / "quality.md").read_text()


def test_a_cut_off_run_keeps_the_networks_it_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from smoothexplain_quality import real as real_module

    checkpoint = tmp_path / "real-networks"
    first, maps = real_module.measure_real(TINY, log=lambda _: None, checkpoint=checkpoint)
    assert (checkpoint / "real-lite0.json").is_file()
    assert "gcampp/sg" in first["per_network"]["lite0"]["ours"]  # type: ignore[index]

    def not_again(*_: object) -> None:
        raise AssertionError("a finished network was measured again")

    monkeypatch.setattr(real_module, "_measure_network", not_again)
    said: list[str] = []
    again, maps_again = real_module.measure_real(TINY, log=said.append, checkpoint=checkpoint)
    assert again["per_network"] == first["per_network"] and "read back" in said[0]
    assert again["meta"]["seconds"] == first["meta"]["seconds"] > 0  # type: ignore[index]
    assert set(maps_again) == set(maps)
    changed = replace(TINY, curve_steps=2)  # another plan: nothing is read back
    with pytest.raises(AssertionError, match="measured again"):
        real_module.measure_real(changed, log=lambda _: None, checkpoint=checkpoint)
