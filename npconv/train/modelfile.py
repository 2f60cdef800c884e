"""Model files: ``model.npz``, the weights and what is needed to rebuild the model.

Layout of the npz archive (plain arrays only, so it loads with ``allow_pickle=False``):

* one array per parameter and buffer, under its PyTorch-style ``state_dict``
  name (``"0.weight"``, ``"1.running_mean"``, ``"1.num_batches_tracked"``, ...);
* ``"__config__"``: a 0-d unicode string holding JSON -- the ``format``
  (``npconv-model-2``), the model's architecture settings (those marked
  ``architecture`` in :mod:`npconv.train.settings`: model, dropout, dropout
  location, dtype), the layers of a model described by an architecture file
  (``model_layers``, :mod:`npconv.models.spec`; null for a preset), the number
  and names of the classes, the dataset and its SHA-256, and the input scaling
  used in training (:data:`MODEL_FILE_KEYS`).

The model is rebuilt from the file alone: an architecture file's model from the layers
it recorded, never from the ``.toml`` file, which may have changed or be gone.
Files of the first format, ``npconv-model-1`` (presets only, no buffers), load
as before.

Model files get shared between people, so a file is never trusted: the archive
is read by :func:`npconv.io.npz.read_npz` (no pickles, every header checked
before allocating), then the config's every field and every array's name,
shape and dtype are checked against the model it describes.
"""

import re

import numpy as np

from .. import backend as B
from ..errors import ModelFileError, SettingError, is_int, is_number
from ..io.npz import json_entry, one_line, parse_json_entry, read_npz, write_npz
from ..models import ModelSpecError, build_model, check_layers, is_architecture_file
from .checkpoint import META_KEY as CHECKPOINT_KEY
from .settings import ARCHITECTURE, SETTINGS

CONFIG_KEY = "__config__"
FORMAT = "npconv-model-2"
#: The formats this version reads: ``npconv-model-1`` is ``-2`` without ``model_layers`` (and without buffers).
READABLE_FORMATS = ("npconv-model-1", FORMAT)

#: Largest number of classes a model file may declare.
MAX_CLASSES = 10_000


#: What a model file records beside the architecture settings: the classes, the data it was trained on
#: (the dataset's name and SHA-256, so that evaluating it on other data can say so), and how inputs were prepared.
MODEL_FILE_KEYS = (*ARCHITECTURE, "model_layers", "num_classes", "classes", "dataset", "dataset_sha256",
                   "normalize_mean", "normalize_std")


def model_config(run_config):
    """The part of a run's ``config.json`` that its model file records (:data:`MODEL_FILE_KEYS`)."""
    return {key: run_config.get(key) for key in MODEL_FILE_KEYS}


def save_model(path, model, config):
    """Write ``model``'s weights and buffers and ``config`` (a JSON-able dict) to ``path`` atomically.

    ``config`` must hold at least the architecture settings
    (:data:`~npconv.train.settings.ARCHITECTURE`: model, dropout, dropout_at, dtype).
    """
    arrays = {name: B.to_numpy(a) for name, a in model.state_dict().items()}
    arrays[CONFIG_KEY] = json_entry({"format": FORMAT, **config})
    write_npz(path, arrays)


def check_model_config(config, where, error, stored_values=None):
    """Check the architecture of a model config from a file; return build_model's arguments.

    The architecture settings (:data:`npconv.train.settings.ARCHITECTURE`) are
    checked as a training run checks them; ``dropout`` and ``dropout_at`` may be
    absent (no dropout), ``model`` and ``dtype`` may not. An architecture file's
    model must record its layers (``model_layers``), which are checked as an
    architecture file's are; ``stored_values``, the number of values the file holds, bounds the
    parameters they may declare, so that a hostile config cannot make npconv
    allocate more than the file itself holds.
    """
    spec = {}
    for name in ARCHITECTURE:
        setting = SETTINGS[name]
        value = config.get(name, None if name in ("model", "dtype") else setting.default)
        try:
            setting.check(value)
        except SettingError:
            raise error(f"{where}: {name!r} must be {setting.accepted()}, got {value!r}") from None
        spec[name] = value
    num_classes = config.get("num_classes", 10)
    if not is_int(num_classes) or not 1 <= num_classes <= MAX_CLASSES:
        raise error(f"{where}: 'num_classes' must be an integer from 1 to {MAX_CLASSES}, got {num_classes!r}")
    layers = config.get("model_layers")
    if is_architecture_file(spec["model"]) or layers is not None:
        if not is_architecture_file(spec["model"]):
            raise error(f"{where}: 'model_layers' is for a model described by an architecture file, but the model is "
                        f"{spec['model']!r}")
        if layers is None:
            raise error(f"{where}: the model {spec['model']} was described by an architecture file, but its layers "
                        "('model_layers') are not recorded")
        try:
            checked = check_layers(layers, num_classes)
        except ModelSpecError as e:
            raise error(f"{where}: its recorded layers do not work: {e}") from None
        if stored_values is not None and checked.num_parameters > stored_values:
            raise error(f"{where}: its layers declare {checked.num_parameters} parameters, but the file holds "
                        f"only {stored_values} values")
        layers = checked.layers
    return dict(name=spec.pop("model"), num_classes=num_classes, layers=layers, **spec)


def build_checked_model(arrays, config, where, error):
    """Rebuild the model ``config`` describes and load ``arrays`` into it, checking everything."""
    spec = check_model_config(config, where, error, stored_values=sum(a.size for a in arrays.values()))
    try:
        model = build_model(
            spec["name"], spec["dropout"], spec["dropout_at"], layers=spec["layers"], num_classes=spec["num_classes"],
            rng=np.random.default_rng(0), dtype=spec["dtype"],
        )
        model.load_state_dict(arrays)
    except (ValueError, TypeError) as e:
        raise error(f"{where}: the arrays do not fit the {spec['name']} architecture: {one_line(e)}") from None
    return model


def load_model(path):
    """Load a model file written by :func:`save_model`; returns ``(model, config)``.

    Raises :class:`~npconv.errors.ModelFileError` with a message naming the file
    for anything that is not a well-formed npconv model file.
    """
    path = str(path)
    arrays = read_npz(path, "model file", ModelFileError)
    if CONFIG_KEY not in arrays and CHECKPOINT_KEY in arrays:
        raise ModelFileError(f"{path}: a checkpoint, not a model file: use the model.npz written beside it when the "
                             "run completes (npconv train --resume finishes an unfinished run)")
    if CONFIG_KEY not in arrays:
        raise ModelFileError(f"{path}: not an npconv model file (no {CONFIG_KEY} entry)")
    config = parse_json_entry(arrays.pop(CONFIG_KEY), f"{path}: its {CONFIG_KEY} entry", ModelFileError)
    if config.get("format") not in READABLE_FORMATS:
        raise ModelFileError(f"{path}: unknown model file format {config.get('format')!r} "
                             f"(expected one of {', '.join(READABLE_FORMATS)})")
    for key in ("normalize_mean", "normalize_std"):
        value = config.get(key)
        if value is not None and (not is_number(value) or (key == "normalize_std" and value <= 0)):
            raise ModelFileError(f"{path}: {key!r} must be a finite number (std > 0) or null, got {value!r}")
    dataset = config.get("dataset")
    if dataset is not None and not isinstance(dataset, str):
        raise ModelFileError(f"{path}: 'dataset' must be a dataset name, got {dataset!r}")
    digest = config.get("dataset_sha256")
    if digest is not None and not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
        raise ModelFileError(f"{path}: 'dataset_sha256' must be a SHA-256 in hex, got {one_line(repr(digest))}")
    classes = config.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise ModelFileError(f"{path}: 'classes' must be a list of strings, got {classes!r}")
    model = build_checked_model(arrays, config, path, ModelFileError)
    num_classes = config.get("num_classes", 10)
    if classes is not None and len(classes) != num_classes:
        raise ModelFileError(f"{path}: {len(classes)} class names for {num_classes} classes")
    config.setdefault("num_classes", num_classes)
    return model, config
