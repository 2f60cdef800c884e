"""Weight initialization.

npconv initializes every Linear and Conv2d weight with **He (Kaiming) uniform**
initialization for ReLU networks (He et al., 2015):

.. math::  W \\sim U(-b, b), \\qquad b = \\sqrt{6 / \\text{fan\\_in}}

so that ``Var(W) = 2 / fan_in``, which keeps the variance of the pre-activations
the same from layer to layer through ReLUs (which zero half of their inputs).
``fan_in`` is ``in_features`` for Linear and ``in_channels * KH * KW`` for
Conv2d. Biases start at zero.

(PyTorch's own default is the same family with a smaller gain:
``b = 1 / sqrt(fan_in)``.)

The study's models (:mod:`npconv.models`) start their **output layer** at
zero (:func:`zero_classifier`). He's gain is meant for a layer whose outputs go
through a ReLU; the classifier's go to the softmax, and He-sized logits make an
untrained network confidently wrong (initial loss about 3 for the MLP and 4-5
for the ConvNet). With zero weights and bias every logit is 0, the softmax is
uniform and the initial loss is exactly :math:`\\ln K`. Training is not stuck:
the classifier's own gradient :math:`dy^T h` is non-zero from the first step,
and the layers below receive gradient from the second step on.

Other codes initialize otherwise -- Gaussian weights of one fixed size
(:func:`normal`), an output layer like the others -- and
:func:`npconv.models.initialization.reinitialize` does that to a built model
(``npconv train --init-std 0.01 --no-zero-classifier``), so the choices can
be compared (``npconv/studies/collapse.toml``).
"""

import numpy as np

from .. import backend as B


def he_uniform(shape, fan_in, rng, dtype):
    """He-uniform weights of ``shape``, drawn from ``rng`` (a ``numpy.random.Generator``)."""
    bound = np.sqrt(6.0 / fan_in)
    return B.xp.asarray(rng.uniform(-bound, bound, size=shape), dtype=dtype)


def zero_classifier(layer):
    """Set the output layer's weights to zero (its bias already is): uniform initial predictions."""
    layer.weight.data[...] = 0


def default_rng(rng):
    """``rng`` itself, or a fresh unseeded Generator when ``rng`` is None."""
    return np.random.default_rng() if rng is None else rng


def normal(shape, std, rng, dtype):
    """Gaussian weights :math:`W \\sim N(0, \\text{std}^2)` of ``shape``, drawn from ``rng``.

    What many course codes use (e.g. ``std = 0.01``): the same size for every
    layer, whatever its fan-in, so activations shrink (or grow) from layer to
    layer by about ``std * sqrt(fan_in / 2)`` through ReLUs.
    """
    return B.xp.asarray(rng.normal(0.0, std, size=shape), dtype=dtype)
