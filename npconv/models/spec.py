"""Models described as a list of layers: the architecture-file format, its checks, shape inference and building.

An **architecture file** is a TOML file that lists the layers in order, one ``[[layer]]``
table each: its ``type`` and its options, named as PyTorch names them::

    [[layer]]
    type = "conv2d"
    out_channels = 32
    kernel_size = 3
    padding = 1

    [[layer]]
    type = "batchnorm2d"

    [[layer]]
    type = "relu"

    [[layer]]
    type = "maxpool2d"
    kernel_size = 2

    [[layer]]
    type = "flatten"

    [[layer]]
    type = "linear"
    out_features = 10

The input sizes -- ``in_channels``, ``in_features``, ``num_features`` -- are
inferred from the input, 1x28x28 images (:data:`INPUT_SHAPE`), layer by layer;
given anyway, they must agree. The last layer must give one value per class.
Every option and every shape is checked, and a problem names the layer
(counted from 0 in the file's order, as ``model[k]``, the weights' names
``0.weight`` and ``health.csv`` count them) and what is wrong; the example
without its flatten layer gives ``layer 4 (linear): needs flat input (N,
features), gets 32x14x14 images: put a flatten layer before it``.

==================================  ======================================================
``type``                            options (default)
==================================  ======================================================
``conv2d``                          ``out_channels``, ``kernel_size``, ``stride`` (1),
                                    ``padding`` (0), ``in_channels`` (inferred)
``linear``                          ``out_features``, ``in_features`` (inferred)
``maxpool2d``                       ``kernel_size``, ``stride`` (``kernel_size``)
``avgpool2d``                       ``kernel_size``, ``stride`` (``kernel_size``), ``padding`` (0)
``batchnorm2d``, ``batchnorm1d``    ``eps`` (1e-5), ``momentum`` (0.1), ``affine`` (true),
                                    ``num_features`` (inferred)
``dropout``                         ``p`` (0.5)
``relu``, ``sigmoid``,              none
``tanh``, ``flatten``
==================================  ======================================================

``kernel_size``, ``stride`` and ``padding`` are an integer or a pair
``[along H, along W]``. Type names are case-insensitive (``Conv2d`` works).

A checked list of layers is **normalized**: every option present, defaults and
inferred sizes filled in, a square pair written as one integer. That list is
what a run records (``config.json``, ``model.npz``), so a run never needs its
architecture file again, and two files that describe the same network record the same
architecture.
"""

import math
import os
import tomllib
from dataclasses import dataclass

from .. import nn
from ..errors import NpconvError, is_int, is_number
from ..nn.conv import output_size, pair  # the layers' own output-size formula and size pairs

#: The shape of one input image, (C, H, W): every dataset npconv reads is 28x28 grey (see npconv.data).
INPUT_SHAPE = (1, 28, 28)
#: Most layers a model may list.
MAX_LAYERS = 1000
#: Most parameters a model may have (400 MB in float32), and most values a layer's output may have per image
#: (4 MB): guards against a file that asks for absurd sizes, checked before anything is allocated.
MAX_PARAMETERS = 100_000_000
MAX_VALUES_PER_IMAGE = 1_000_000

REQUIRED, INFERRED = "required", "inferred"

#: Each layer type's options: name -> (kind, default), the default REQUIRED, INFERRED or a value
#: (None for a pooling stride: the kernel size). The kinds are checked by :func:`_check_option`.
LAYER_TYPES = {
    "conv2d": {"in_channels": ("count", INFERRED), "out_channels": ("count", REQUIRED),
               "kernel_size": ("size", REQUIRED), "stride": ("size", 1), "padding": ("padding", 0)},
    "linear": {"in_features": ("count", INFERRED), "out_features": ("count", REQUIRED)},
    "maxpool2d": {"kernel_size": ("size", REQUIRED), "stride": ("size", None)},
    "avgpool2d": {"kernel_size": ("size", REQUIRED), "stride": ("size", None), "padding": ("padding", 0)},
    "batchnorm1d": {"num_features": ("count", INFERRED), "eps": ("positive", 1e-5), "momentum": ("fraction", 0.1),
                    "affine": ("bool", True)},
    "batchnorm2d": {"num_features": ("count", INFERRED), "eps": ("positive", 1e-5), "momentum": ("fraction", 0.1),
                    "affine": ("bool", True)},
    "dropout": {"p": ("probability", 0.5)},
    "relu": {}, "sigmoid": {}, "tanh": {}, "flatten": {},
}

_ACCEPTED = {
    "count": "an integer >= 1", "size": "an integer >= 1 or a pair of them",
    "padding": "an integer >= 0 or a pair of them", "positive": "a number > 0",
    "fraction": "a number in [0, 1]", "probability": "a number in [0, 1)", "bool": "true or false",
}


class ModelSpecError(NpconvError):
    """A model description (an architecture file, or the layers a run or a model file recorded) that does not work.

    The message names the layer and the problem; callers put the file's name in front.
    """


def is_architecture_file(model):
    """Whether a ``model`` setting names an architecture file (a path ending in ``.toml``) rather than a preset."""
    return isinstance(model, str) and model.lower().endswith(".toml")


def model_label(model):
    """A short name for file and folder names: the preset's name, or the architecture file's name without ``.toml``."""
    if not is_architecture_file(model):
        return model
    stem = os.path.basename(model)[: -len(".toml")]
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem) or "model"


def read_architecture_file(path, num_classes=None):
    """Read and check the architecture file at ``path``; returns its layers, normalized (see the module docstring).

    Raises :class:`ModelSpecError` naming the file, and the layer, for anything wrong.
    """
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise ModelSpecError(f"{path}: no such architecture file") from None
    except IsADirectoryError:
        raise ModelSpecError(f"{path}: is a directory, not an architecture file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ModelSpecError(f"{path}: not a valid TOML architecture file ({e})") from None
    except OSError as e:
        raise ModelSpecError(f"{path}: cannot read the architecture file ({e.strerror})") from None
    unknown = sorted(set(doc) - {"layer"})
    if unknown:
        raise ModelSpecError(f"{path}: unknown top-level key {unknown[0]!r}; an architecture file lists [[layer]] "
                             "tables")
    if "layer" not in doc:
        raise ModelSpecError(f"{path}: no [[layer]] tables; an architecture file lists its layers as [[layer]] tables")
    try:
        return check_layers(doc["layer"], num_classes).layers
    except ModelSpecError as e:
        raise ModelSpecError(f"{path}: {e}") from None


@dataclass
class CheckedLayers:
    """A checked model description: its ``layers`` (normalized), ``output_shape`` and ``num_parameters``."""

    layers: list
    output_shape: tuple
    num_parameters: int


def check_layers(layers, num_classes=None, input_shape=INPUT_SHAPE):
    """Check a list of layer tables and follow the input's shape through them.

    Parameters
    ----------
    layers : list of dict
        One dict per layer: ``type`` and options (from an architecture file, or a
        normalized list recorded earlier).
    num_classes : int, optional
        When given, the last layer must give ``(num_classes,)`` outputs.
    input_shape : (C, H, W)

    Returns
    -------
    CheckedLayers
        The normalized layers (new dicts), the output shape and the number of parameters.

    Raises
    ------
    ModelSpecError
        ``layer K (type): problem`` for the first layer that does not work (K counted from 0).
    """
    if not isinstance(layers, list) or not layers:
        raise ModelSpecError("the layers must be a non-empty list of tables ([[layer]] in an architecture file)")
    if len(layers) > MAX_LAYERS:
        raise ModelSpecError(f"{len(layers)} layers, more than the {MAX_LAYERS} a model may have")
    shape, normalized, parameters = tuple(input_shape), [], 0
    for k, table in enumerate(layers):  # counted from 0, as model[k] and the weights' names (0.weight)
        layer, shape, count = _check_layer(k, table, shape)
        normalized.append(layer)
        parameters += count
        if parameters > MAX_PARAMETERS:
            raise ModelSpecError(f"layer {k} ({layer['type']}): the model has more than {MAX_PARAMETERS} parameters")
        if math.prod(shape) > MAX_VALUES_PER_IMAGE:
            raise ModelSpecError(f"layer {k} ({layer['type']}): its output has {math.prod(shape)} values per image, "
                                 f"more than the {MAX_VALUES_PER_IMAGE} a layer may have")
    if num_classes is not None and shape != (num_classes,):
        last = normalized[-1]["type"]
        raise ModelSpecError(f"layer {len(layers) - 1} ({last}): the model's output is {_shape(shape)}, but the data "
                             f"has {num_classes} classes: end with a linear layer with out_features = {num_classes}")
    return CheckedLayers(normalized, shape, parameters)


def _shape(shape):
    if len(shape) == 1:
        return f"{shape[0]} values"
    c, h, w = shape
    return f"{c}x{h}x{w} images"


def _check_layer(k, table, shape):
    """One layer: ``(normalized dict, output shape, parameter count)``; :class:`ModelSpecError` if it does not work."""
    if not isinstance(table, dict):
        raise ModelSpecError(f"layer {k}: must be a table with a 'type', got {table!r}")
    kind = table.get("type")
    if kind is None:
        raise ModelSpecError(f"layer {k}: has no type; give one of: {', '.join(LAYER_TYPES)}")
    if not isinstance(kind, str) or kind.lower() not in LAYER_TYPES:
        raise ModelSpecError(f"layer {k}: unknown type {kind!r}; known: {', '.join(LAYER_TYPES)}")
    kind = kind.lower()
    where = f"layer {k} ({kind})"
    spec = LAYER_TYPES[kind]
    unknown = sorted(set(table) - set(spec) - {"type"})
    if unknown:
        known = ", ".join(spec) if spec else "none"
        raise ModelSpecError(f"{where}: unknown option {unknown[0]!r}; its options: {known}")
    options = {}
    for name, (option_kind, default) in spec.items():
        if name in table:
            options[name] = _check_option(where, name, option_kind, table[name])
        elif default is REQUIRED:
            raise ModelSpecError(f"{where}: {name} is missing ({_ACCEPTED[option_kind]})")
        elif default is not INFERRED:
            options[name] = default
    if "stride" in options and options["stride"] is None:
        options["stride"] = options["kernel_size"]
    out_shape, parameters = _infer(where, kind, options, shape)
    return {"type": kind, **{name: options[name] for name in spec}}, out_shape, parameters


def _check_option(where, name, kind, value):
    """The option's value, normalized (a square pair as one integer); :class:`ModelSpecError` if not accepted."""
    ok = False
    if kind in ("count", "size", "padding"):
        low = 0 if kind == "padding" else 1
        if is_int(value):
            ok = value >= low
        elif kind != "count" and isinstance(value, list) and len(value) == 2 and all(is_int(v) for v in value):
            ok = all(v >= low for v in value)
            value = value[0] if value[0] == value[1] else [int(v) for v in value]
    elif kind == "bool":
        ok = isinstance(value, bool)
    elif is_number(value):
        value = float(value)
        ok = {"positive": value > 0, "fraction": 0 <= value <= 1, "probability": 0 <= value < 1}[kind]
    if not ok:
        raise ModelSpecError(f"{where}: {name} must be {_ACCEPTED[kind]}, got {value!r}")
    return int(value) if is_int(value) else value


def _infer(where, kind, options, shape):
    """The output shape of a layer of ``kind`` on ``shape``, and its parameter count; fills inferred sizes."""
    image_layers = ("conv2d", "maxpool2d", "avgpool2d", "batchnorm2d")
    if kind in image_layers and len(shape) != 3:
        raise ModelSpecError(f"{where}: needs images (N, C, H, W), gets {_shape(shape)}")
    if kind in ("linear", "batchnorm1d") and len(shape) != 1:
        raise ModelSpecError(f"{where}: needs flat input (N, features), gets {_shape(shape)}: "
                             "put a flatten layer before it")
    inferred = {"conv2d": "in_channels", "linear": "in_features", "batchnorm1d": "num_features",
                "batchnorm2d": "num_features"}.get(kind)
    if inferred is not None:
        given = options.get(inferred)
        if given is not None and given != shape[0]:
            raise ModelSpecError(f"{where}: {inferred} = {given}, but its input has {shape[0]}")
        options[inferred] = shape[0]
    if kind == "flatten":
        return (math.prod(shape),), 0
    if kind == "linear":
        return (options["out_features"],), (shape[0] + 1) * options["out_features"]
    if kind in ("batchnorm1d", "batchnorm2d"):
        return shape, 2 * shape[0] if options["affine"] else 0
    if kind not in image_layers:  # relu, sigmoid, tanh, dropout
        return shape, 0
    c, h, w = shape
    (kh, kw), (sh, sw) = pair(options["kernel_size"], "kernel_size"), pair(options["stride"], "stride")
    ph, pw = pair(options.get("padding", 0), "padding")
    if kind == "avgpool2d" and (2 * ph > kh or 2 * pw > kw):
        raise ModelSpecError(f"{where}: padding {options['padding']} is more than half the kernel size")
    try:
        oh, ow = output_size(h, kh, sh, ph, "height"), output_size(w, kw, sw, pw, "width")
    except ValueError as e:
        raise ModelSpecError(f"{where}: on its {c}x{h}x{w} input: {e}") from None
    if kind == "conv2d":
        k = options["out_channels"]
        return (k, oh, ow), k * (c * kh * kw + 1)
    return (c, oh, ow), 0


def build_layers(layers, *, rng=None, dtype=None):
    """The npconv layers of a normalized list (from :func:`check_layers`), in order, weights drawn from ``rng``."""
    built = []
    for layer in layers:
        kind, options = layer["type"], {k: v for k, v in layer.items() if k != "type"}
        if kind == "conv2d":
            built.append(nn.Conv2d(rng=rng, dtype=dtype, **options))
        elif kind == "linear":
            built.append(nn.Linear(rng=rng, dtype=dtype, **options))
        elif kind in ("batchnorm1d", "batchnorm2d"):
            cls = nn.BatchNorm1d if kind == "batchnorm1d" else nn.BatchNorm2d
            built.append(cls(dtype=dtype, **options))
        elif kind == "dropout":
            built.append(nn.Dropout(options["p"], rng=rng))
        else:
            cls = {"maxpool2d": nn.MaxPool2d, "avgpool2d": nn.AvgPool2d, "relu": nn.ReLU, "sigmoid": nn.Sigmoid,
                   "tanh": nn.Tanh, "flatten": nn.Flatten}[kind]
            built.append(cls(**options))
    return built
