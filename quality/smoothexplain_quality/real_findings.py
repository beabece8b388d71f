"""Findings of the pretrained-network part, decided from the numbers like those of the shapes part.

Every paragraph names the networks and photos it rests on; where the shapes models (with their
ground-truth masks) point the other way, it says so. A comparison counts only when its paired
95 % bootstrap interval over photos excludes zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from .grid import BASES, Cell
from .stats import mean_ci
from .tables import compare

__all__ = [
    "BETTER",
    "MAIN_BASES",
    "defaults_findings",
    "direction",
    "faithfulness_findings",
    "judge",
    "real_sanity_findings",
    "real_sparseness_findings",
    "verdicts",
]

Results = Mapping[str, Any]
MAIN_BASES: Final[tuple[str, ...]] = ("grad", "ixg", "ig_b", "ig_w", "gbp")
SETTINGS: Final[dict[str, str]] = {"ours": "our defaults", "paper": "the paper's settings"}
_FAIL_RHO: Final[float] = 0.5  # as in the shapes part: above it the map mostly shows the input
_MIN_PHOTOS: Final[int] = 2
_SAID: Final[dict[str, str]] = {"higher": "higher", "lower": "lower", "tie": "no difference"}
# Which way is better for each metric (Sparseness as the paper reads it).
BETTER: Final[dict[str, str]] = {"sparseness": "higher", "deletion": "lower", "insertion": "higher"}


def _label(key: str) -> str:
    return Cell(*key.split("/")).label


def _cells(real: Results, network: str, setting: str) -> Mapping[str, Mapping[str, list[float]]]:
    """A setting's per-photo scores; the plain methods (no noise) are shared by both settings."""
    entry = real["per_network"][network]
    cells: dict[str, Mapping[str, list[float]]] = dict(entry["ours"])
    if setting == "paper":
        cells.update(entry["paper"])
    return cells


def judge(first: Sequence[float], second: Sequence[float]) -> str:
    """compare()'s verdict, but "tie" on a single photo, where no interval exists."""
    comparison = compare(first, second)
    return comparison.verdict if comparison.difference.count >= _MIN_PHOTOS else "tie"


def verdicts(real: Results, setting: str, metric: str, first: str, second: str) -> dict[str, str]:
    """(network, base) → "higher" / "lower" / "tie" for first − second on `metric`."""
    found = {}
    for network in real["per_network"]:
        cells = _cells(real, network, setting)
        for base in MAIN_BASES:
            pair = cells[f"{base}/{first}"][metric], cells[f"{base}/{second}"][metric]
            found[f"{network} {BASES[base].label}"] = judge(*pair)
    return found


def direction(found: Mapping[str, str]) -> str:
    """ "higher" or "lower" when that verdict outnumbers the other, else "mixed"."""
    higher = sum(v == "higher" for v in found.values())
    lower = sum(v == "lower" for v in found.values())
    return "higher" if higher > lower else "lower" if lower > higher else "mixed"


def _tally(found: Mapping[str, str], metric: str) -> str:
    better = BETTER[metric]
    worse = "lower" if better == "higher" else "higher"
    counts = {v: sum(x == v for x in found.values()) for v in ("higher", "lower", "tie")}
    return (
        f"better ({better}) in {counts[better]}, worse in {counts[worse]}, no measurable "
        f"difference in {counts['tie']} of {len(found)}"
    )


def _basis(real: Results) -> str:
    networks = ", ".join(real["per_network"][n]["label"] for n in real["per_network"])
    photos = real["photos"]
    return f"{networks}; {len(photos)} photos ({', '.join(photos)})"


def _shapes_sparseness(shapes: Results) -> dict[str, str]:
    found = {}
    for model, measured in shapes["per_model"].items():
        grid = measured["grid"]
        for base in MAIN_BASES:
            pair = grid[f"{base}/ag"]["sparseness"], grid[f"{base}/sg"]["sparseness"]
            found[f"{model} {BASES[base].label}"] = compare(*pair).verdict
    return found


def _noise_levels(real: Results, shapes: Results) -> str:
    """AdaptGrad's mean σᵢ / range on both kinds of image (a measured difference between them)."""
    on_photos = [
        mean_ci(entry["noise"]["ours"]["ag_sigma"]).mean for entry in real["per_network"].values()
    ]
    on_shapes = mean_ci(shapes["noise"]["ag_sigma"]).mean
    return (
        f"AdaptGrad's mean σᵢ at c = 0.95 is {on_shapes:.3f} of the range on the shapes images "
        f"and {min(on_photos):.3f}–{max(on_photos):.3f} on the photographs (SmoothGrad: 0.15 "
        "on both)"
    )


def _agreement(real_way: str, shapes_way: str, what: str, levels: str) -> str:
    if "mixed" in (real_way, shapes_way):
        return f"One of the two parts is mixed on {what}, so neither confirms the other."
    if real_way == shapes_way:
        return f"The shapes models agree on {what} ({levels})."
    return (
        f"**The shapes models disagree on {what}**: there AdaptGrad is mostly {shapes_way}. "
        f"One measured difference: {levels}, so the two smoothings differ by more noise on one "
        "kind of image than on the other."
    )


def real_sparseness_findings(real: Results, shapes: Results | None) -> list[str]:
    paragraphs = []
    for setting, said in SETTINGS.items():
        found = verdicts(real, setting, "sparseness", "ag", "sg")
        text = (
            f"**Sparseness, AdaptGrad − SmoothGrad at {said}** ({_basis(real)}): AdaptGrad is "
            f"{_tally(found, 'sparseness')} (network × method) cases ("
            + ", ".join(f"{k}: {v}" for k, v in found.items())
            + "). The paper has AdaptGrad sparser in all 12 of its cases (VGG16, Inception-v3, "
            "ResNet-50 × Grad, GI, IG(B), IG(W))."
        )
        if shapes is not None and setting == "ours":
            shapes_way = direction(_shapes_sparseness(shapes))
            text += " " + _agreement(
                direction(found), shapes_way, "Sparseness", _noise_levels(real, shapes)
            )
        paragraphs.append(text)
    return paragraphs


def _beats_random(real: Results, metric: str) -> tuple[int, int]:
    """(network, cell) cases at our defaults whose area is better than a random order's."""
    better, total = 0, 0
    for network in real["per_network"]:
        random = real["per_network"][network]["random"][metric]
        for values in _cells(real, network, "ours").values():
            better += judge(values[metric], random) == BETTER[metric]
            total += 1
    return better, total


def _shapes_mass(shapes: Results) -> str:
    """Which way AdaptGrad − SmoothGrad's relevance mass on the object mostly goes (shapes)."""
    found = {}
    for model, measured in shapes["per_model"].items():
        grid = measured["grid"]
        for base in MAIN_BASES:
            found[f"{model} {base}"] = judge(grid[f"{base}/ag"]["mass"], grid[f"{base}/sg"]["mass"])
    return direction(found)


def _faithfulness_agreement(real: Results, shapes: Results) -> str:
    ways = {m: direction(verdicts(real, "ours", m, "ag", "sg")) for m in ("deletion", "insertion")}
    real_way = (
        "better"
        if ways["deletion"] == "lower" and ways["insertion"] == "higher"
        else "worse"
        if ways["deletion"] == "higher" and ways["insertion"] == "lower"
        else "mixed"
    )
    mass = _shapes_mass(shapes)
    shapes_way = {"higher": "better", "lower": "worse"}.get(mass, "mixed")
    said = (
        "The shapes models' ground truth (relevance mass on the object) "
        f"{'agrees' if real_way == shapes_way else 'disagrees'}"
    )
    if "mixed" in (real_way, shapes_way):
        return (
            f"On the shapes models AdaptGrad's relevance mass is mostly {mass} than "
            f"SmoothGrad's; here it is {real_way} on deletion and insertion together, so the "
            "two parts do not confirm each other."
        )
    return (
        f"{said}: there AdaptGrad puts {'more' if mass == 'higher' else 'less'} relevance on "
        f"the object, here its order is mostly {real_way} for the network (different "
        "metrics: where the relevance lies against what the network needs)."
    )


def faithfulness_findings(real: Results, shapes: Results | None = None) -> list[str]:
    paragraphs = []
    deletion, insertion = _beats_random(real, "deletion"), _beats_random(real, "insertion")
    paragraphs.append(
        f"**Against a random order** ({_basis(real)}, our defaults): the map's order deletes "
        f"the class probability measurably faster than a random order in {deletion[0]} of "
        f"{deletion[1]} (network × method) cases, and restores it faster in {insertion[0]} of "
        f"{insertion[1]}."
    )
    for setting, said in SETTINGS.items():
        parts = []
        for metric in ("deletion", "insertion"):
            found = verdicts(real, setting, metric, "ag", "sg")
            parts.append(f"on the {metric} area AdaptGrad is {_tally(found, metric)} cases")
        text = f"**Faithfulness at {said}** ({_basis(real)}): " + "; ".join(parts) + "."
        if shapes is not None and setting == "ours":
            text += " " + _faithfulness_agreement(real, shapes)
        paragraphs.append(text)
    return paragraphs


def real_sanity_findings(real: Results) -> list[str]:
    paragraphs = []
    for entry in real["per_network"].values():
        if "sanity" not in entry:
            continue
        stages = list(entry["sanity"])
        first = {k: mean_ci(v).mean for k, v in entry["sanity"][stages[0]].items()}
        last = {k: mean_ci(v).mean for k, v in entry["sanity"][stages[-1]].items()}
        failing = [f"{_label(k)} ({rho:.2f})" for k, rho in last.items() if rho > _FAIL_RHO]
        paragraphs.append(
            f"**Cascading randomisation on {entry['label']}** ({len(real['photos'])} photos): "
            f"re-initialising the classifier alone leaves ρ from {min(first.values()):.2f} to "
            f"{max(first.values()):.2f} ("
            + ", ".join(f"{_label(k)} {rho:.2f}" for k, rho in first.items())
            + f"); with every stage re-initialised ρ is {min(last.values()):.2f} to "
            f"{max(last.values()):.2f}: "
            + (
                f"above {_FAIL_RHO} for {', '.join(failing)}."
                if failing
                else f"every method passes (ρ ≤ {_FAIL_RHO})."
            )
        )
    return paragraphs


def _setting_effect(real: Results, key: str, metric: str) -> dict[str, str]:
    """network → verdict of paper − ours for one smoothed cell."""
    return {
        entry["label"]: judge(entry["paper"][key][metric], entry["ours"][key][metric])
        for entry in real["per_network"].values()
    }


def defaults_findings(real: Results) -> list[str]:
    """What the measurements say about `noise`, `sigma` and `confidence` (the evidence only)."""
    lines = []
    for key, change in (("grad/sg", "σ 0.15 → 0.2"), ("grad/ag", "c 0.95 → 0.975")):
        effects = []
        for metric in ("sparseness", "deletion", "insertion"):
            found = _setting_effect(real, key, metric)
            said = ", ".join(f"{n} {_SAID[v]}" for n, v in found.items())
            effects.append(f"{metric} {said}")
        lines.append(f"- {_label(key)}, {change}: " + "; ".join(effects) + ".")
    noise = []
    for metric, better in (
        ("sparseness", "higher"),
        ("deletion", "lower"),
        ("insertion", "higher"),
    ):
        found = verdicts(real, "ours", metric, "ag", "sg")
        way = direction(found)
        noise.append(
            f"{metric}: no consistent direction"
            if way == "mixed"
            else f"{metric}: AdaptGrad mostly {way} ({'better' if way == better else 'worse'})"
        )
    lines.append(f"- noise (AdaptGrad against SmoothGrad, our defaults): {'; '.join(noise)}.")
    return [
        f"**Evidence on the defaults** ({_basis(real)}; the paper's settings minus ours, paired "
        "over photos, for the gradient's SmoothGrad and AdaptGrad; two points per parameter, so "
        "this says which way to move, not where the optimum is):",
        "\n".join(lines),
    ]
