"""Model files: ``model.npz`` holds the weights and what is needed to rebuild the model.

Layout of the npz archive (plain arrays only, so it loads with ``allow_pickle=False``):

* one float array per parameter, under its PyTorch-style name (``"0.weight"``, ...);
* ``"__config__"``: a 0-d unicode string holding JSON -- the model's name,
  dropout settings, dtype and the input normalization used in training.

Loading rebuilds the model from the config and checks every array's name,
shape and dtype against it; nothing from the file is ever executed.
"""

import json
import zipfile

import numpy as np

from . import backend as B
from .errors import ModelFileError
from .fileio import atomic_write
from .models import build_model

CONFIG_KEY = "__config__"
FORMAT = "npconv-model-1"


def save_model(path, model, config):
    """Write ``model``'s weights and ``config`` (a JSON-able dict) to ``path`` atomically.

    ``config`` must hold at least ``model``, ``dropout``, ``dropout_at`` and ``dtype``.
    """
    arrays = {name: B.to_numpy(a) for name, a in model.state_dict().items()}
    arrays[CONFIG_KEY] = np.array(json.dumps({"format": FORMAT, **config}))
    with atomic_write(path) as f:
        np.savez(f, **arrays)


def load_model(path):
    """Load a model file written by :func:`save_model`; returns ``(model, config)``.

    Raises :class:`~npconv.errors.ModelFileError` with a message naming the file
    for anything that is not a well-formed npconv model file.
    """
    path = str(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic != b"PK\x03\x04":  # every npz archive is a zip file
            raise ModelFileError(f"{path}: not an npz model file")
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ModelFileError(f"{path}: not an npz archive (a single array or other data)")
        with loaded as npz:
            arrays = {name: npz[name] for name in npz.files}
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ModelFileError(f"{path}: is a directory, not a model file") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
        # np.load raises ValueError for object arrays or non-npy data, BadZipFile
        # or EOFError for damaged archives, OSError for unreadable files.
        raise ModelFileError(f"{path}: not a valid npconv model file ({e})") from None
    if CONFIG_KEY not in arrays:
        raise ModelFileError(f"{path}: not an npconv model file (no {CONFIG_KEY} entry)")
    try:
        config = json.loads(str(arrays.pop(CONFIG_KEY)))
        if not isinstance(config, dict) or config.get("format") != FORMAT:
            raise ValueError(f"unknown format {config.get('format') if isinstance(config, dict) else config!r}")
        model = build_model(
            config["model"], config.get("dropout", 0.0), config.get("dropout_at", "before-fc"),
            num_classes=int(config.get("num_classes", 10)), rng=np.random.default_rng(0), dtype=config["dtype"],
        )
        model.load_state_dict(arrays)
    except (ValueError, KeyError, TypeError) as e:
        raise ModelFileError(f"{path}: the model file does not fit its architecture: {e}") from None
    return model, config
