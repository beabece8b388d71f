"""Self-contained demo model: synthetic shape data, a small CNN and its build-time training.

Importing this package has no side effects; training runs only through
:func:`smoothexplain.demo.train.train` or ``python -m smoothexplain.demo.train``.
"""

from .net import INDEX_TO_NAME_FILE, META_FILE, WEIGHTS_FILE, ShapesNet, load_model
from .preprocess import MEAN, STD, input_bounds, normalize
from .shapes import (
    CLASS_NAMES,
    NUM_CLASSES,
    ShapesDataset,
    make_dataset,
    render_batch,
    render_sample,
)

__all__ = [
    "CLASS_NAMES",
    "INDEX_TO_NAME_FILE",
    "MEAN",
    "META_FILE",
    "NUM_CLASSES",
    "STD",
    "WEIGHTS_FILE",
    "ShapesDataset",
    "ShapesNet",
    "input_bounds",
    "load_model",
    "make_dataset",
    "normalize",
    "render_batch",
    "render_sample",
]
