"""Weight initialization.

npconv initializes every Linear and Conv2d weight with **He (Kaiming) uniform**
initialization for ReLU networks (He et al., 2015):

.. math::  W \\sim U(-b, b), \\qquad b = \\sqrt{6 / \\text{fan\\_in}}

so that ``Var(W) = 2 / fan_in``, which keeps the variance of the pre-activations
the same from layer to layer through ReLUs (which zero half of their inputs). ``fan_in`` is ``in_features`` for Linear and
``in_channels * KH * KW`` for Conv2d. Biases start at zero.

(PyTorch's own default is the same family with a smaller gain:
``b = 1 / sqrt(fan_in)``.)
"""

import numpy as np

from .. import backend as B


def he_uniform(shape, fan_in, rng, dtype):
    """He-uniform weights of ``shape``, drawn from ``rng`` (a ``numpy.random.Generator``)."""
    bound = np.sqrt(6.0 / fan_in)
    return B.xp.asarray(rng.uniform(-bound, bound, size=shape), dtype=dtype)


def default_rng(rng):
    """``rng`` itself, or a fresh unseeded Generator when ``rng`` is None."""
    return np.random.default_rng() if rng is None else rng
