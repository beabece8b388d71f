"""The report's findings, decided from the numbers so that a re-run cannot leave a stale claim.

A comparison counts only when its paired 95 % interval excludes zero ("higher"/"lower");
otherwise it is reported as no measurable difference. Each function returns paragraphs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

from .grid import BASES, Cell
from .tables import compare, error_constant, needed_samples, summarise

__all__ = [
    "convergence_findings",
    "ground_truth_findings",
    "sanity_findings",
    "sparseness_findings",
    "sweep_findings",
]

Results = Mapping[str, Any]
MAIN_BASES: Final[tuple[str, ...]] = ("grad", "ixg", "ig_b", "ig_w", "gbp")
_SAID: Final[dict[str, str]] = {
    "higher": "higher",
    "lower": "lower",
    "tie": "not measurably different",
}
# After every stage is re-initialised, a map that still correlates this well with the trained
# model's map is mostly showing the input, not the model.
_FAIL_RHO: Final[float] = 0.5


def _label(key: str) -> str:
    base, smoothing = key.split("/")
    return Cell(base, smoothing).label


def _name(results: Results, model: str) -> str:
    return str(results["models"][model]["label"])


def _grid(results: Results, model: str) -> Mapping[str, Mapping[str, Sequence[float]]]:
    grid: Mapping[str, Mapping[str, Sequence[float]]] = results["per_model"][model]["grid"]
    return grid


def _grouped(verdicts: Mapping[str, str]) -> str:
    """{"GI": "higher", "IG(B)": "tie"} → "higher for GI; not measurably different for IG(B)"."""
    groups: dict[str, list[str]] = {}
    for label, verdict in verdicts.items():
        groups.setdefault(verdict, []).append(label)
    return "; ".join(f"{_SAID[v]} for {', '.join(groups[v])}" for v in _SAID if v in groups)


def _versus(results: Results, model: str, metric: str, first: str, second: str) -> dict[str, str]:
    grid = _grid(results, model)
    return {
        BASES[b].label: compare(grid[f"{b}/{first}"][metric], grid[f"{b}/{second}"][metric]).verdict
        for b in MAIN_BASES
    }


def _count(verdicts: Mapping[str, Mapping[str, str]], wanted: str) -> int:
    return sum(v == wanted for by_base in verdicts.values() for v in by_base.values())


def _cases(verdicts: Mapping[str, Mapping[str, str]]) -> int:
    return sum(len(by_base) for by_base in verdicts.values())


def sparseness_findings(results: Results) -> list[str]:
    models = list(results["per_model"])
    ag_sg = {m: _versus(results, m, "sparseness", "ag", "sg") for m in models}
    sg_plain = {m: _versus(results, m, "sparseness", "sg", "plain") for m in models}
    ag_plain = {m: _versus(results, m, "sparseness", "ag", "plain") for m in models}
    wins, cases = _count(ag_sg, "higher"), _cases(ag_sg)
    paragraphs = [
        f"**AdaptGrad vs SmoothGrad on Sparseness: AdaptGrad is sparser in {wins} of {cases} "
        "(model, method) cases.** "
        + ". ".join(f"On {_name(results, m)} it is {_grouped(ag_sg[m])}" for m in models)
        + ". The paper reports AdaptGrad sparser than SmoothGrad in every one of its 12 "
        "(VGG16, Inception-v3, ResNet-50) × (Grad, GI, IG(B), IG(W)) cases, by 0.002–0.041.",
        "**Smoothing against the plain method.** SmoothGrad's Sparseness compared with the "
        "unsmoothed method is "
        + " — and ".join(f"on {m}: {_grouped(sg_plain[m])}" for m in models)
        + ". AdaptGrad's is, "
        + " — and ".join(f"on {m}: {_grouped(ag_plain[m])}" for m in models)
        + ". The Gini index rewards relevance concentrated on few pixels whatever those pixels "
        "are, so gradient speckle scores as \u201csparse\u201d: Sparseness alone cannot tell "
        "a focused map from a noisy one, which is why the next section measures where the "
        "relevance lies.",
    ]
    return paragraphs


def ground_truth_findings(results: Results) -> list[str]:
    models = list(results["per_model"])
    paragraphs = []
    for metric, what in (("mass", "relevance mass"), ("pointing", "pointing game")):
        ag_sg = {m: _versus(results, m, metric, "ag", "sg") for m in models}
        paragraphs.append(
            f"**AdaptGrad vs SmoothGrad on the {what}: AdaptGrad is higher in "
            f"{_count(ag_sg, 'higher')} and lower in {_count(ag_sg, 'lower')} of "
            f"{_cases(ag_sg)} cases.** "
            + ". ".join(f"On {_name(results, m)} it is {_grouped(ag_sg[m])}" for m in models)
            + "."
        )
    sg_plain = {m: _versus(results, m, "mass", "sg", "plain") for m in models}
    best = []
    for model in models:
        grid = _grid(results, model)
        ranked = sorted(grid, key=lambda k: summarise(grid[k]["mass"]).mean, reverse=True)
        top = ", ".join(f"{_label(k)} {summarise(grid[k]['mass']).mean:.2f}" for k in ranked[:3])
        best.append(f"{model}: {top}")
    paragraphs.append(
        "**Does smoothing move relevance onto the object?** SmoothGrad's relevance mass "
        "compared with the plain method is "
        + " — and ".join(f"on {m}: {_grouped(sg_plain[m])}" for m in models)
        + ". Highest mean relevance mass — "
        + "; ".join(best)
        + "."
    )
    return paragraphs


def sanity_findings(results: Results) -> list[str]:
    paragraphs = []
    for model in results["per_model"]:
        sanity = results["per_model"][model]["sanity"]
        stages = list(sanity)
        last = {key: summarise(values).mean for key, values in sanity[stages[-1]].items()}
        first = {key: summarise(values).mean for key, values in sanity[stages[0]].items()}
        failing = [f"{_label(k)} ({rho:.2f})" for k, rho in last.items() if rho > _FAIL_RHO]
        passing = [f"{_label(k)} ({rho:.2f})" for k, rho in last.items() if rho <= _FAIL_RHO]
        lowest_top = min(first, key=lambda k: first[k])
        text = (
            f"**{_name(results, model)}.** With every stage re-initialised, the rank "
            f"correlation with the trained model's map falls to ≤ {_FAIL_RHO} for "
            f"{', '.join(passing) or 'no method'}"
        )
        if failing:
            text += (
                f"; it stays above {_FAIL_RHO} for {', '.join(failing)}: those maps mostly "
                "show the input's structure, which no weight change removes"
            )
        text += (
            f". Randomising only the classifier moves {_label(lowest_top)} the most "
            f"(ρ = {first[lowest_top]:.2f})."
        )
        paragraphs.append(text)
    labels = {key: summarise(values).mean for key, values in results["labels"].items()}
    paragraphs.append(
        "**Data randomisation.** Maps of the demo network trained on permuted labels "
        "correlate with the real model's maps at ρ = "
        + ", ".join(f"{_label(k)} {rho:.2f}" for k, rho in labels.items())
        + "."
    )
    return paragraphs


def convergence_findings(results: Results, targets: Sequence[float] = (0.2,)) -> list[str]:
    plan = results["meta"]["plan"]
    reference, default = int(plan["reference_samples"]), int(plan["settings"]["nt_samples"])
    parts = []
    for model in results["per_model"]:
        conv = results["per_model"][model]["convergence"]
        sg = needed_samples(conv["sg"]["error"], reference, targets)[0]
        ag = needed_samples(conv["ag"]["error"], reference, targets)[0]
        at_default = {
            s: error_constant(conv[s]["error"], reference) / math.sqrt(default)
            for s in ("sg", "ag")
        }
        parts.append(
            f"on {model} SmoothGrad needs {sg} and AdaptGrad {ag} samples for a "
            f"{100 * targets[0]:.0f} % relative error (AdaptGrad/SmoothGrad = {ag / sg:.2f}); "
            f"at the default {default} samples the errors are about "
            f"{100 * at_default['sg']:.0f} % and {100 * at_default['ag']:.0f} %"
        )
    return [
        "**Samples.** Both estimators converge as 1/√n, as Monte Carlo must; "
        + "; ".join(parts)
        + ". AdaptGrad's per-sample spread differs from SmoothGrad's because its σᵢ does: "
        "larger on mid-range features, zero at the bounds."
    ]


def sweep_findings(results: Results) -> list[str]:
    plan = results["meta"]["plan"]
    parts = []
    for model in results["per_model"]:
        sweep = results["per_model"][model]["sweep"]
        for kind, values, name in (("sg", plan["sigmas"], "σ"), ("ag", plan["confidences"], "c")):
            means = {v: summarise(sweep[f"{kind}:{v}"]["mass"]).mean for v in values}
            best = max(means, key=lambda v: means[v])
            parts.append(
                f"{model} {'SmoothGrad' if kind == 'sg' else 'AdaptGrad'}: best mass at "
                f"{name} = {best} ({means[best]:.3f}; "
                + ", ".join(f"{v}: {m:.3f}" for v, m in means.items())
                + ")"
            )
    return ["**σ and c.** Relevance mass by setting — " + "; ".join(parts) + "."]
