"""The study's two models, by name: ``cnn`` and ``mlp``.

``cnn`` -- the study's ConvNet, for 1x28x28 images::

    Conv2d(1, 8, 3, padding=1)  -> ReLU -> MaxPool2d(2)     # 8 x 14 x 14
    Conv2d(8, 16, 3, padding=1) -> ReLU -> MaxPool2d(2)     # 16 x 7 x 7
    Flatten (784) -> Linear(784, 128) -> ReLU -> Linear(128, 10)

``mlp`` -- ``Flatten (784) -> Linear(784, 128) -> ReLU -> Linear(128, 10)``.

Dropout, as in the study, is placed by rate ``dropout`` and location
``dropout_at``: ``"before-conv"`` (before each Conv2d, so the first one drops
input pixels), ``"before-pool"`` (before each MaxPool2d) or ``"before-fc"``
(before each Linear). The MLP has no Conv2d or MaxPool2d, so only
``before-fc`` applies to it.

Initialization: He-uniform for every layer (:mod:`npconv.nn.init`), except the
output layer, whose weights start at zero: all logits start at 0, every class
is equally likely, and the initial loss is exactly ``ln 10``.
"""

from .. import backend as B
from .. import nn
from ..nn.init import zero_classifier

MODELS = ("cnn", "mlp")
DROPOUT_LOCATIONS = ("before-conv", "before-pool", "before-fc")
_LAYER_KIND = {"before-conv": nn.Conv2d, "before-pool": nn.MaxPool2d, "before-fc": nn.Linear}


def _with_dropout(layers, dropout, dropout_at, rng):
    """Insert ``Dropout(dropout)`` before every layer of the kind ``dropout_at`` names."""
    if dropout == 0:
        return layers
    kind = _LAYER_KIND[dropout_at]
    if not any(isinstance(layer, kind) for layer in layers):
        raise ValueError(f"dropout at {dropout_at!r}: this model has no {kind.__name__} layer")
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


def build_model(name, dropout=0.0, dropout_at="before-fc", *, num_classes=10, rng=None, dtype=None):
    """Build the model called ``name`` (``"cnn"`` or ``"mlp"``)."""
    builders = {"cnn": cnn, "mlp": mlp}
    if name not in builders:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    if dropout_at not in DROPOUT_LOCATIONS:
        raise ValueError(f"unknown dropout location {dropout_at!r}; choose from {', '.join(DROPOUT_LOCATIONS)}")
    return builders[name](dropout, dropout_at, num_classes=num_classes, rng=rng, dtype=dtype)
