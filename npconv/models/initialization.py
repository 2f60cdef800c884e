"""Initializing a built model another way than npconv does, to compare (``--init-std``, ``--no-zero-classifier``).

npconv's models start every Linear and Conv2d weight He-uniform and their
output layer at zero (:mod:`npconv.nn.init`). Course codes often draw every
weight from one Gaussian of a fixed size (``std = 0.01``) and start the
output layer like the others; :func:`reinitialize` does that to a model
already built, so that ``npconv/studies/collapse.toml`` can sweep the choice.
Only Linear and Conv2d weights change: biases stay zero, and layers with
other parameters (a batch norm's scale) keep theirs.
"""

import numpy as np

from .. import nn
from ..nn.init import he_uniform, normal


def layers_with_weights(model):
    """The Linear and Conv2d layers of ``model`` (a Sequential), in order."""
    return [layer for layer in model if isinstance(layer, (nn.Linear, nn.Conv2d))]


def reinitialize(model, rng, *, std=None, zero_output=True):
    """Initialize ``model``'s Linear and Conv2d weights again, another way than its layers did.

    ``std``, if given, draws every such weight from :func:`~npconv.nn.init.normal`
    (biases stay zero); otherwise the weights keep their He-uniform values.
    Then the output layer (the last of them) is set to zero when
    ``zero_output``, or, when it was zero, gets He-uniform weights like the
    others. Draws from ``rng`` only what it changes, in layer order.
    """
    layers = layers_with_weights(model)
    if std is not None:
        for layer in layers:
            w = layer.weight.data
            w[...] = normal(w.shape, std, rng, w.dtype)
    out = layers[-1].weight.data
    if zero_output:
        out[...] = 0
    elif std is None and not out.any():
        out[...] = he_uniform(out.shape, int(np.prod(out.shape[1:])), rng, out.dtype)
