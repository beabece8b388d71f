"""docs/quality.md from the measured per-image results: tables, figures and data-driven findings.

Every sentence that states a comparison is decided here from the numbers (a paired 95 %
interval that excludes zero is "higher"/"lower", otherwise "no measurable difference"), so a
re-run that moves a number cannot leave a stale claim behind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

from .figures import convergence_figure, map_grid, sanity_figure
from .findings import (
    convergence_findings,
    ground_truth_findings,
    sanity_findings,
    sparseness_findings,
    summary,
    sweep_findings,
)
from .grid import BASES, Cell
from .paper import PAPER_SPARSENESS
from .real_report import PART_2, render_real
from .stats import mean_ci
from .tables import compare, markdown_table, needed_samples, noise_quantile

__all__ = ["PAPER_VGG16_SPARSENESS", "render"]

Results = Mapping[str, Any]

# The VGG16 column of the paper's Table 2 (all three columns: .paper).
PAPER_VGG16_SPARSENESS: Final[dict[str, float]] = PAPER_SPARSENESS["VGG16"]
MAIN_BASES: Final[tuple[str, ...]] = ("grad", "ixg", "ig_b", "ig_w", "gbp")


def _cell(key: str) -> Cell:
    base, smoothing = key.split("/")
    return Cell(base, smoothing)


def _label(key: str) -> str:
    return _cell(key).label


def _models(results: Results) -> list[str]:
    return list(results["per_model"])


def _model_label(results: Results, name: str) -> str:
    return str(results["models"][name]["label"])


def _grid(results: Results, model: str) -> Mapping[str, Mapping[str, Sequence[float]]]:
    grid: Mapping[str, Mapping[str, Sequence[float]]] = results["per_model"][model]["grid"]
    return grid


def _duration(meta: Mapping[str, Any]) -> str:
    wall = f"{meta['seconds'] / 60:.1f} min"
    if "cpu_seconds" not in meta:
        return wall
    # On a shared machine wall time says little; CPU time (both threads) is the cost.
    return f"{wall} ({meta['cpu_seconds'] / 60:.1f} min of CPU time)"


def _training_time(meta: Mapping[str, Any]) -> str:
    wall = f"{float(meta['train_seconds']):.0f} s"
    if "train_cpu_seconds" not in meta:
        return wall
    return f"{wall} ({float(meta['train_cpu_seconds']):.0f} s CPU)"


def _setup(results: Results) -> str:
    meta, plan = results["meta"], results["meta"]["plan"]
    settings = plan["settings"]
    rows = []
    for name, model in results["models"].items():
        m = model["meta"]
        count = m.get("heldout_count") or m.get("config", {}).get("heldout_count", "?")
        accuracy = f"{100 * m['heldout_accuracy']:.1f} % of {count}"
        rows.append([name, model["label"], accuracy, _training_time(m)])
    share = mean_ci(results["mask_share"])
    return "\n".join(
        [
            "## Setup",
            "",
            f"Measured {meta['date']} on {meta['machine']}, torch {meta['torch']}, Quantus "
            f"{meta['quantus']}; the whole run took {_duration(meta)}. Everything is seeded: "
            "`make report` reproduces these numbers on the same torch build.",
            "",
            markdown_table(["model", "what", "held-out accuracy", "training (wall)"], rows),
            "",
            "Wall times depend on what else the machine runs (this one was shared); CPU times, "
            "where recorded, count both threads.",
            "",
            f"- **Data**: the first {plan['images']} held-out images of the demo data set (seed "
            f"{meta['heldout_seed']}, never seen in training), explained for their true class. "
            f"The object mask covers {100 * share.mean:.1f} % of an image on average: that is "
            "the relevance mass and pointing-game score of a map that ignores the object.",
            f"- **Smoothing**: SmoothGrad σ = {settings['sigma']} × the input range, AdaptGrad "
            f"c = {settings['confidence']}, both with nt_samples = {settings['nt_samples']} "
            f"(integrated gradients: {settings['ig_nt_samples']} noise samples × "
            f"{settings['ig_steps']} Gauss–Legendre path points, the same for plain, "
            "SmoothGrad and AdaptGrad IG, to keep the run in budget). Bounds: the normalised "
            "range of [0, 1] pixels, per channel. IG(B) and IG(W) integrate from the black "
            "(lower bound) and white (upper bound) image. All maps come from "
            "`smoothexplain.explain()`, seed 0.",
            "- **Pooling**: every metric reads the map Σ_c |A_c| (what the heatmaps show); "
            "SmoothGrad² and VarGrad maps are non-negative already.",
            "- **Intervals**: mean [95 % percentile-bootstrap interval] over images (4 000 "
            "resamples). AdaptGrad vs SmoothGrad is compared *paired* (per image), as "
            "Δ = AG − SG with its interval and the share of images where AdaptGrad scores "
            "higher; a difference counts only when its interval excludes 0.",
        ]
    )


def _noise(results: Results) -> str:
    settings = results["meta"]["plan"]["settings"]
    noise = results["noise"]
    sg_out, ag_out = mean_ci(noise["sg_out"]), mean_ci(noise["ag_out"])
    ag_sigma = mean_ci(noise["ag_sigma"])
    mid_range = 0.5 / noise_quantile(settings["confidence"])  # half the range away from both
    rows = [
        ["SmoothGrad", f"{settings['sigma']} (every feature)", f"{100 * sg_out.mean:.2f} %"],
        [
            "AdaptGrad",
            f"{ag_sigma.mean:.3f} (mean; 0 at a bound, {mid_range:.3f} at mid-range)",
            f"{100 * ag_out.mean:.2f} %",
        ],
    ]
    return "\n".join(
        [
            "## 0. The noise itself",
            "",
            "What the two smoothings draw on these images, in closed form (no model involved): "
            "the noise σ as a fraction of the input range, and the share of noisy features that "
            "land outside the range, P(xᵢ + εᵢ ∉ [low, high]) — the AdaptGrad paper's "
            '"inherent noise".',
            "",
            markdown_table(["smoothing", "σ / range", "features out of range"], rows),
            "",
            "AdaptGrad's σᵢ = min(|xᵢ − low|, |xᵢ − high|) / (√2·erfinv(c)) keeps each feature "
            "inside the range with probability ≥ c, as the paper derives it (its Eq. 14). The "
            "paper's printed Eq. 13 divides by √2·erfinv((1 + c)/2) instead, which is our "
            "formula at c ≈ 0.975 (for c = 0.95); the c sweep below covers both.",
        ]
    )


def _sparseness(results: Results) -> str:
    models = _models(results)
    headers = ["method", "paper, VGG16"] + [f"{m} (ours)" for m in models]
    rows = []
    for base in MAIN_BASES:
        for smoothing in ("plain", "sg", "ag"):
            key = f"{base}/{smoothing}"
            paper = PAPER_VGG16_SPARSENESS.get(key)
            row = [_label(key), "—" if paper is None else f"{paper:.4f}"]
            row += [mean_ci(_grid(results, m)[key]["sparseness"]).format() for m in models]
            rows.append(row)
    for smoothing in ("sg_sq", "vg", "ag_sq", "avg"):
        key = f"grad/{smoothing}"
        row = [_label(key), "—"]
        row += [mean_ci(_grid(results, m)[key]["sparseness"]).format() for m in models]
        rows.append(row)
    return "\n".join(
        [
            "## 1. Sparseness (Quantus)",
            "",
            "Gini index of the pooled map, computed by `quantus.Sparseness` (0.6.0; each map "
            "divided by its own maximum — Quantus's default divides by the maximum of the whole "
            "batch, which makes a score depend on the other images in the batch). Higher means "
            "fewer pixels carry the relevance.",
            "",
            markdown_table(headers, rows),
        ]
    )


def _differences(results: Results) -> str:
    models = _models(results)
    headers = ["base", "metric"] + [f"Δ AG − SG, {m} (AG wins)" for m in models]
    rows = []
    for base in MAIN_BASES:
        for metric in ("sparseness", "mass", "pointing"):
            row = [BASES[base].label, metric]
            for model in models:
                grid = _grid(results, model)
                row.append(compare(grid[f"{base}/ag"][metric], grid[f"{base}/sg"][metric]).format())
            rows.append(row)
    return "\n".join(
        [
            "### AdaptGrad against SmoothGrad, image by image",
            "",
            markdown_table(headers, rows),
        ]
    )


def _ground_truth(results: Results) -> str:
    models = _models(results)
    headers = ["method"]
    for model in models:
        headers += [f"{model}: mass", f"{model}: rank", f"{model}: pointing"]
    rows = []
    keys = [f"{b}/{s}" for b in MAIN_BASES for s in ("plain", "sg", "ag")]
    keys += [f"grad/{s}" for s in ("sg_sq", "vg", "ag_sq", "avg")]
    for key in keys:
        row = [_label(key)]
        for model in models:
            grid = _grid(results, model)
            row += [mean_ci(grid[key][m]).format(2) for m in ("mass", "rank", "pointing")]
        rows.append(row)
    share = mean_ci(results["mask_share"])
    return "\n".join(
        [
            "## 2. Ground truth: relevance on the object",
            "",
            "Relevance mass accuracy (share of the map's relevance inside the object mask) and "
            "relevance rank accuracy (share of the top-K pixels inside the mask, K = mask size), "
            "both from Arras et al. (2022, CLEVR-XAI); pointing game (the single most relevant "
            f"pixel is on the object). Chance level for all three: {share.format(3)}.",
            "",
            markdown_table(headers, rows),
        ]
    )


def _training_noise(results: Results) -> str:
    demo = _grid(results, "demo")
    nonoise = results["nonoise"]
    rows = []
    for name, grid in (("demo", demo), ("nonoise", nonoise)):
        meta = results["models"][name]["meta"]
        row = [_model_label(results, name), f"{100 * meta['heldout_accuracy']:.1f} %"]
        for key in ("grad/plain", "grad/sg", "grad/ag"):
            row += [mean_ci(grid[key]["mass"]).format(3)]
        row += [mean_ci(grid[key]["pointing"]).format(2) for key in ("grad/sg", "grad/ag")]
        rows.append(row)
    headers = ["model", "accuracy", "Grad mass", "SG mass", "AG mass", "SG pointing", "AG pointing"]
    sg = compare(demo["grad/sg"]["mass"], nonoise["grad/sg"]["mass"])
    ag = compare(demo["grad/ag"]["mass"], nonoise["grad/ag"]["mass"])
    return "\n".join(
        [
            "## 3. Why the demo model is trained with input noise",
            "",
            "The demo network is trained with Gaussian input noise σ ~ U(0, 0.2) of the pixel "
            "range. The same network and schedule trained without it:",
            "",
            markdown_table(headers, rows),
            "",
            f"**Finding.** Noise-augmented training changes SmoothGrad's relevance mass by "
            f"{sg.format()} and AdaptGrad's by {ag.format()} (paired over the same images)."
            + (
                " A model that never saw noisy inputs is explained, by both, at inputs unlike "
                "any it was trained on, and its smoothed maps spread over the background."
                if sg.verdict == "higher" and ag.verdict == "higher"
                else ""
            ),
        ]
    )


def _sanity(results: Results, figure: str) -> str:
    sections = [
        "## 4. Sanity checks (Adebayo et al., 2018)",
        "",
        "Cascading randomisation: the stages of the trained model are re-initialised from the "
        "logits down, one more per column, and each method's map is compared with the trained "
        "model's map by Spearman rank correlation of the pooled maps (1: unchanged, 0: "
        f"unrelated). {results['meta']['plan']['sanity_images']} images. *Labels*: the "
        "demo network trained on permuted labels (data randomisation). A method passes when "
        "its correlation falls.",
        "",
        f"![cascading randomisation]({figure})",
        "",
    ]
    for model in _models(results):
        sanity = results["per_model"][model]["sanity"]
        stages = list(sanity)
        headers = ["method"] + [f"…{s}" for s in stages]
        with_labels = model == "demo"
        if with_labels:
            headers.append("labels")
        rows = []
        for key in sanity[stages[0]]:
            row = [_label(key)] + [mean_ci(sanity[s][key]).format(2) for s in stages]
            if with_labels:
                row.append(mean_ci(results["labels"][key]).format(2))
            rows.append(row)
        sections += [f"**{_model_label(results, model)}**", "", markdown_table(headers, rows), ""]
    return "\n".join(sections)


def _convergence(results: Results, figure: str) -> str:
    plan = results["meta"]["plan"]
    reference = int(plan["reference_samples"])
    rows: list[list[str]] = []
    need: list[list[str]] = []
    samples = [str(n) for n in plan["convergence_samples"]]
    headers = ["nt_samples"]
    for model in _models(results):
        conv = results["per_model"][model]["convergence"]
        headers += [f"{model} SG error", f"{model} AG error", f"{model} SG ρ", f"{model} AG ρ"]
        for smoothing in ("sg", "ag"):
            counts = needed_samples(conv[smoothing]["error"], reference, (0.3, 0.2, 0.1))
            need.append([model, _label(f"grad/{smoothing}")] + [str(c) for c in counts])
    for n in samples:
        row = [n]
        for model in _models(results):
            conv = results["per_model"][model]["convergence"]
            row += [mean_ci(conv[s]["error"][n]).format(3) for s in ("sg", "ag")]
            row += [mean_ci(conv[s]["rank"][n]).format(3) for s in ("sg", "ag")]
        rows.append(row)
    return "\n".join(
        [
            "## 5. Convergence: how many samples",
            "",
            f"Gradient SmoothGrad and AdaptGrad of {plan['convergence_images']} images: relative "
            f"L2 error of an n-sample map against a {reference}-sample reference drawn with "
            f"other seeds (mean of {plan['repeats']} repeats per image), and the Spearman ρ of "
            "the pooled maps with the reference's.",
            "",
            f"![convergence]({figure})",
            "",
            markdown_table(headers, rows),
            "",
            "Samples needed for a mean relative error of 30 %, 20 %, 10 % (fit of "
            "k·√(1/n + 1/reference), n ≥ 4):",
            "",
            markdown_table(["model", "method", "30 %", "20 %", "10 %"], need),
        ]
    )


def _sweep(results: Results) -> str:
    plan = results["meta"]["plan"]
    metrics = ("mass", "rank", "pointing", "sparseness")
    headers = ["setting", "mean σ / range"]
    for model in _models(results):
        headers += [f"{model}: {metric}" for metric in metrics]
    # AdaptGrad's σᵢ scales with 1 / quantile(c): its mean σ at any c follows from the one at
    # the report's c.
    ag_sigma = mean_ci(results["noise"]["ag_sigma"]).mean
    base = noise_quantile(plan["settings"]["confidence"])
    rows = []
    for kind, values, name in (
        ("sg", plan["sigmas"], "SG σ = {} × range"),
        ("ag", plan["confidences"], "AG c = {}"),
    ):
        for value in values:
            sigma = value if kind == "sg" else ag_sigma * base / noise_quantile(value)
            row = [name.format(value), f"{sigma:.3f}"]
            for model in _models(results):
                scores = results["per_model"][model]["sweep"][f"{kind}:{value}"]
                row += [mean_ci(scores[m]).format(3) for m in metrics]
            rows.append(row)
    return "\n".join(
        [
            "## 6. Choosing σ and c",
            "",
            f"Gradient SmoothGrad over σ and AdaptGrad over c, first {plan['sweep_images']} "
            f"images, nt_samples = {plan['settings']['nt_samples']}.",
            "",
            markdown_table(headers, rows),
        ]
    )


def _figure_section(paths: Mapping[str, str]) -> str:
    lines = ["## 7. What the maps look like", ""]
    for model, path in paths.items():
        lines += [f"![{model} maps]({path})", ""]
    lines.append(
        "Each row is one held-out image (the object's outline in cyan) with one colour scale "
        "for the whole row (0 to the row's 99.5th percentile); SmoothGrad² and the VarGrads "
        "are shown as square roots, so every panel is in gradient units."
    )
    return "\n".join(lines)


_TITLE: Final[str] = (
    "# Explanation quality: AdaptGrad against SmoothGrad\n\n"
    "Generated by `make report` (`python -m smoothexplain_quality.run`); do not edit by "
    "hand. Smoothing method names as in the AdaptGrad paper (Zhou et al., 2024): "
    "S- = SmoothGrad, A- = AdaptGrad, GI = input×gradient, GBP = guided backprop."
)


def _shapes(results: Results, maps: Mapping[str, np.ndarray], docs: Path) -> list[str]:
    """The shapes part's sections, writing its figures."""
    figures = docs / "figures"
    grids = {}
    for model in _models(results):
        path = figures / f"quality-maps-{model}.png"
        map_grid(maps, model, _model_label(results, model), path)
        grids[model] = f"figures/{path.name}"
    sanity_labels = {k: _label(k) for k in results["per_model"]["demo"]["sanity"]["classifier"]}
    sanity_figure(
        {m: results["per_model"][m]["sanity"] for m in _models(results)},
        sanity_labels,
        figures / "quality-sanity.png",
    )
    convergence_figure(
        {
            f"{model} {_label(f'grad/{s}')}": results["per_model"][model]["convergence"][s]["error"]
            for model in _models(results)
            for s in ("sg", "ag")
        },
        figures / "quality-convergence.png",
    )
    return [
        *summary(results),
        _setup(results),
        _noise(results),
        _sparseness(results),
        _differences(results),
        *sparseness_findings(results),
        _ground_truth(results),
        *ground_truth_findings(results),
        _training_noise(results),
        _sanity(results, "figures/quality-sanity.png"),
        *sanity_findings(results),
        _convergence(results, "figures/quality-convergence.png"),
        *convergence_findings(results),
        _sweep(results),
        *sweep_findings(results),
        _figure_section(grids),
    ]


def _previous_shapes(report: Path) -> str | None:
    """The shapes part of an existing report (everything before Part 2), if it has one."""
    if not report.is_file():
        return None
    text = report.read_text().split(f"\n{PART_2}")[0].rstrip()
    return text if text.startswith(_TITLE.split("\n")[0]) and "\n## Setup" in text else None


def render(
    results: Results | None,
    maps: Mapping[str, np.ndarray] | None,
    docs: Path,
    real: tuple[Results, Mapping[str, np.ndarray]] | None = None,
) -> Path:
    """Write `docs/quality.md` and `docs/figures/*.png` from the shapes part's `results` and
    `maps` and the pretrained part's (`real`), whichever are measured; returns the path.

    Without the shapes results, the shapes part of the existing report (and its figures) is
    kept as it is, so that the pretrained part can be re-measured alone.
    """
    out = docs / "quality.md"
    if results is not None and maps is not None:
        shapes = "\n\n".join([_TITLE, *_shapes(results, maps, docs)])
    else:
        absent = (
            f"{_TITLE}\n\n*The shapes part (sections 0–7) is not measured here: `make report`.*"
        )
        shapes = _previous_shapes(out) or absent
    parts = [shapes]
    if real is not None:
        parts.append(render_real(real[0], real[1], docs, results))
    out.write_text("\n\n".join(parts) + "\n")
    return out
