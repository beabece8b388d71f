"""The sample photographs the page offers: the natural photos scikit-image ships (CC0 or
public domain, per `skimage.data`'s docstrings), read from the installed package and never
copied into ours. Without scikit-image (the `demo` extra) the page offers none.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SAMPLES", "Sample", "sample_bytes", "sample_files"]


@dataclass(frozen=True)
class Sample:
    name: str  # what the page and the API call it
    title: str
    file: str  # inside skimage/data/
    credit: str


SAMPLES: tuple[Sample, ...] = (
    Sample("cat", "Chelsea the cat", "chelsea.png", "Stefan van der Walt, CC0"),
    Sample("coffee", "A cup of coffee", "coffee.png", "Rachel Michetti, CC0"),
    Sample("rocket", "A rocket launch", "rocket.jpg", "SpaceX, public domain"),
    Sample("astronaut", "Astronaut Eileen Collins", "astronaut.png", "NASA, public domain"),
)


def _data_dir() -> Path | None:
    """skimage/data/, found without importing scikit-image."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def sample_files() -> dict[str, Path]:
    """The samples present in this installation, by name."""
    folder = _data_dir()
    if folder is None:
        return {}
    return {s.name: folder / s.file for s in SAMPLES if (folder / s.file).is_file()}


def sample_bytes(name: str) -> bytes | None:
    path = sample_files().get(name)
    return None if path is None else path.read_bytes()
