"""The models by name: the study's ``cnn`` and ``mlp``, ``lenet5``, and ``cnn-bn``.

``cnn`` -- the study's ConvNet, for 1x28x28 images::

    Conv2d(1, 8, 3, padding=1)  -> ReLU -> MaxPool2d(2)     # 8 x 14 x 14
    Conv2d(8, 16, 3, padding=1) -> ReLU -> MaxPool2d(2)     # 16 x 7 x 7
    Flatten (784) -> Linear(784, 128) -> ReLU -> Linear(128, 10)

``mlp`` -- ``Flatten (784) -> Linear(784, 128) -> ReLU -> Linear(128, 10)``.

``lenet5`` -- LeNet-5 (LeCun, Bottou, Bengio & Haffner, 1998) as it is built
today, described as layers (:func:`lenet5_layers`)::

    Conv2d(1, 6, 5, padding=2)  -> ReLU -> AvgPool2d(2)     # C1, S2: 6 x 14 x 14
    Conv2d(6, 16, 5)            -> ReLU -> AvgPool2d(2)     # C3, S4: 16 x 5 x 5
    Flatten (400) -> Linear(400, 120) -> ReLU               # C5 (a 5x5 conv on 5x5 maps is a Linear)
    Linear(120, 84) -> ReLU -> Linear(84, 10)               # F6, output

The modern choices, where the paper differs: ReLU instead of the scaled
``1.7159 tanh(2a/3)``; the 28x28 digits padded by 2 instead of drawn on a
32x32 canvas; C3 connected to all 6 maps instead of the paper's connection
table; plain 2x2 averages for S2 and S4 instead of a trained coefficient and
bias per map followed by a sigmoid; a Linear output with softmax cross-entropy
instead of the Euclidean RBF units; He initialization.

``cnn-bn`` -- a ConvNet with batch normalization, the strongest preset
(:func:`cnn_bn_layers`; its training recipe, measured, is in
:data:`npconv.train.settings.MODEL_DEFAULTS`)::

    Conv2d(1, 16, 3, padding=1)  -> BatchNorm2d -> ReLU -> MaxPool2d(2)   # 16 x 14 x 14
    Conv2d(16, 32, 3, padding=1) -> BatchNorm2d -> ReLU -> MaxPool2d(2)   # 32 x 7 x 7
    Flatten (1568) -> Linear(1568, 128) -> BatchNorm1d -> ReLU -> Linear(128, 10)

``lenet5`` and ``cnn-bn`` are written in the architecture-file format
(:mod:`npconv.models.spec`), so an architecture file is the way to vary them.

Any model, a preset or an architecture file (:func:`build_model` with ``layers``),
takes dropout as the study placed it, by rate ``dropout`` and location
``dropout_at``: ``"before-conv"`` (before each Conv2d, so the first one drops
input pixels), ``"before-pool"`` (before each MaxPool2d or AvgPool2d) or
``"before-fc"`` (before each Linear). The MLP has no Conv2d or pooling layer,
so only ``before-fc`` applies to it.

Initialization: He-uniform for every Linear and Conv2d layer
(:mod:`npconv.nn.init`), except the output layer, whose weights start at zero:
all logits start at 0, every class is equally likely, and the initial loss is
exactly ``ln 10``. Batch normalization starts as PyTorch's: gamma 1, beta 0.
"""

from .. import backend as B
from .. import nn
from ..nn.init import zero_classifier
from .spec import build_layers, check_layers, is_architecture_file, read_architecture_file

DROPOUT_LOCATIONS = ("before-conv", "before-pool", "before-fc")
_LAYER_KIND = {"before-conv": (nn.Conv2d,), "before-pool": (nn.MaxPool2d, nn.AvgPool2d), "before-fc": (nn.Linear,)}


def _with_dropout(layers, dropout, dropout_at, rng):
    """Insert ``Dropout(dropout)`` before every layer of the kind ``dropout_at`` names."""
    if dropout == 0:
        return layers
    kind = _LAYER_KIND[dropout_at]
    if not any(isinstance(layer, kind) for layer in layers):
        raise ValueError(f"dropout at {dropout_at!r}: this model has no {' or '.join(k.__name__ for k in kind)} layer")
    out = []
    for layer in layers:
        if isinstance(layer, kind):
            out.append(nn.Dropout(dropout, rng=rng))
        out.append(layer)
    return out


def cnn(dropout=0.0, dropout_at="before-fc", *, num_classes=10, rng=None, dtype=None):
    """The study's ConvNet (see the module docstring); input (N, 1, 28, 28)."""
    dtype = B.resolve_dtype(dtype)
    layers = [
        nn.Conv2d(1, 8, 3, padding=1, rng=rng, dtype=dtype), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, rng=rng, dtype=dtype), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 7 * 7, 128, rng=rng, dtype=dtype), nn.ReLU(),
        nn.Linear(128, num_classes, rng=rng, dtype=dtype),
    ]
    zero_classifier(layers[-1])
    return nn.Sequential(*_with_dropout(layers, dropout, dropout_at, rng))


def mlp(dropout=0.0, dropout_at="before-fc", *, num_classes=10, rng=None, dtype=None):
    """The study's MLP (see the module docstring); input (N, 1, 28, 28) or (N, 784)."""
    dtype = B.resolve_dtype(dtype)
    layers = [
        nn.Flatten(),
        nn.Linear(28 * 28, 128, rng=rng, dtype=dtype), nn.ReLU(),
        nn.Linear(128, num_classes, rng=rng, dtype=dtype),
    ]
    zero_classifier(layers[-1])
    return nn.Sequential(*_with_dropout(layers, dropout, dropout_at, rng))


def lenet5_layers(num_classes=10):
    """LeNet-5 as layers in the architecture-file format (see the module docstring for the modern choices)."""
    return [
        {"type": "conv2d", "out_channels": 6, "kernel_size": 5, "padding": 2}, {"type": "relu"},
        {"type": "avgpool2d", "kernel_size": 2},
        {"type": "conv2d", "out_channels": 16, "kernel_size": 5}, {"type": "relu"},
        {"type": "avgpool2d", "kernel_size": 2},
        {"type": "flatten"},
        {"type": "linear", "out_features": 120}, {"type": "relu"},
        {"type": "linear", "out_features": 84}, {"type": "relu"},
        {"type": "linear", "out_features": num_classes},
    ]


def cnn_bn_layers(num_classes=10):
    """The ConvNet with batch normalization as layers in the architecture-file format (see the module docstring)."""
    return [
        {"type": "conv2d", "out_channels": 16, "kernel_size": 3, "padding": 1}, {"type": "batchnorm2d"},
        {"type": "relu"}, {"type": "maxpool2d", "kernel_size": 2},
        {"type": "conv2d", "out_channels": 32, "kernel_size": 3, "padding": 1}, {"type": "batchnorm2d"},
        {"type": "relu"}, {"type": "maxpool2d", "kernel_size": 2},
        {"type": "flatten"},
        {"type": "linear", "out_features": 128}, {"type": "batchnorm1d"}, {"type": "relu"},
        {"type": "linear", "out_features": num_classes},
    ]


#: Presets written as layers, by name: ``name -> function(num_classes) -> layers``.
LAYER_PRESETS = {"lenet5": lenet5_layers, "cnn-bn": cnn_bn_layers}
#: Every preset's name.
MODELS = ("cnn", "mlp", *LAYER_PRESETS)


def model_layers(name, layers=None, num_classes=None):
    """The layers (normalized) of a preset written as layers, or of ``layers`` given; None for ``cnn``, ``mlp``."""
    if layers is None and name in LAYER_PRESETS:
        layers = LAYER_PRESETS[name](10 if num_classes is None else num_classes)
    if layers is None and is_architecture_file(name):
        return read_architecture_file(name, num_classes)
    return None if layers is None else check_layers(layers, num_classes).layers


def dropout_fits(name, dropout_at, layers=None):
    """Whether the model has a layer that ``dropout_at`` puts dropout before (see the module docstring)."""
    types = {"cnn": {"conv2d", "maxpool2d", "linear"}, "mlp": {"linear"}}.get(name)
    if types is None:
        types = {layer["type"] for layer in model_layers(name, layers)}
    wanted = {"before-conv": {"conv2d"}, "before-pool": {"maxpool2d", "avgpool2d"}, "before-fc": {"linear"}}
    return bool(types & wanted[dropout_at])


def build_model(name, dropout=0.0, dropout_at="before-fc", *, layers=None, num_classes=10, rng=None, dtype=None):
    """Build the model called ``name``: a preset (:data:`MODELS`) or, with ``layers``, a described one.

    ``layers`` is a list of layer tables in the architecture-file format
    (:mod:`npconv.models.spec`), e.g. the ones a run recorded; when ``name``
    is a path ending in ``.toml`` and ``layers`` is None, the file is read.
    A model described by layers starts its last layer at zero, if it is a
    Linear, as the presets do. Raises :class:`~npconv.models.spec.ModelSpecError`
    for layers that do not work, ``ValueError`` for an unknown name.
    """
    if dropout_at not in DROPOUT_LOCATIONS:
        raise ValueError(f"unknown dropout location {dropout_at!r}; choose from {', '.join(DROPOUT_LOCATIONS)}")
    if name in ("cnn", "mlp") and layers is None:
        return {"cnn": cnn, "mlp": mlp}[name](dropout, dropout_at, num_classes=num_classes, rng=rng, dtype=dtype)
    if layers is None and name not in LAYER_PRESETS and not is_architecture_file(name):
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}, or a .toml architecture file")
    built = build_layers(model_layers(name, layers, num_classes), rng=rng, dtype=B.resolve_dtype(dtype))
    if isinstance(built[-1], nn.Linear):
        zero_classifier(built[-1])
    return nn.Sequential(*_with_dropout(built, dropout, dropout_at, rng))
