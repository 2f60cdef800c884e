"""Datasets for npconv: the IDX file format, the known datasets, and minibatching.

- :mod:`npconv.data.idx` -- read and write IDX files (raw or gzip), strictly validated.
- :mod:`npconv.data.datasets` -- MNIST and Fashion-MNIST: where they are found,
  their checksums, :func:`load_dataset`.
- :mod:`npconv.data.loader` -- uint8 images to float (N, 1, H, W), splits,
  subsets, shuffled minibatches.
- :mod:`npconv.data.augment` -- random shifts of training images.

Every problem with a data file raises :class:`npconv.errors.DataError` whose
message starts with the path at fault.
"""

from .augment import random_shift
from .datasets import DATASETS, Dataset, keep_loaded, keeping, load_dataset
from .idx import read_idx, write_idx
from .loader import (
    DataLoader,
    iterate_minibatches,
    pixel_stats,
    random_subset,
    to_float,
    train_val_split,
)

__all__ = [
    "read_idx",
    "write_idx",
    "load_dataset",
    "keep_loaded",
    "keeping",
    "Dataset",
    "DATASETS",
    "to_float",
    "pixel_stats",
    "train_val_split",
    "random_subset",
    "iterate_minibatches",
    "DataLoader",
    "random_shift",
]
