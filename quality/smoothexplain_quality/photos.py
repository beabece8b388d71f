"""The natural photographs the pretrained-network study explains, read from installed packages.

Nothing is downloaded: each file ships inside scikit-image, scikit-learn or matplotlib and is
opened by path (scikit-image's `data` fetchers are bypassed, since some of them would fetch).
`motorcycle_right` is left out: it is the stereo twin of `motorcycle_left`, not a new photo.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from typing import Final

from PIL import Image

__all__ = ["PHOTOS", "Photo", "load_photo"]


@dataclass(frozen=True)
class Photo:
    """One photograph: its name, where it ships and whom to credit when a figure shows it."""

    name: str
    package: str  # the import package whose folder holds the file
    file: str  # path inside that folder
    credit: str


PHOTOS: Final[dict[str, Photo]] = {
    p.name: p
    for p in (
        Photo("chelsea", "skimage.data", "chelsea.png", "Stefan van der Walt, CC0 (scikit-image)"),
        Photo("coffee", "skimage.data", "coffee.png", "Rachel Michetti, CC0 (scikit-image)"),
        Photo("rocket", "skimage.data", "rocket.jpg", "SpaceX, public domain (scikit-image)"),
        Photo("astronaut", "skimage.data", "astronaut.png", "NASA, public domain (scikit-image)"),
        Photo(
            "motorcycle_left",
            "skimage.data",
            "motorcycle_left.png",
            "Middlebury 2014 stereo data set, Scharstein et al. (scikit-image)",
        ),
        Photo(
            "china",
            "sklearn.datasets",
            "images/china.jpg",
            "danielbuechele on Flickr, CC BY 2.0 (scikit-learn)",
        ),
        Photo(
            "flower",
            "sklearn.datasets",
            "images/flower.jpg",
            "vultilion on Flickr (scikit-learn's README names danielbuechele), CC BY 2.0",
        ),
        Photo(
            "grace_hopper",
            "matplotlib",
            "mpl-data/sample_data/grace_hopper.jpg",
            "US Navy, public domain (matplotlib)",
        ),
    )
}


def load_photo(name: str) -> Image.Image:
    """The RGB photograph `name` (one of :data:`PHOTOS`), read from its package's folder."""
    photo = PHOTOS[name]
    with (files(photo.package) / photo.file).open("rb") as stream:
        image = Image.open(stream)
        return image.convert("RGB")
