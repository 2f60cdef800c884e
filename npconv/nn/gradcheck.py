"""Numerical gradient checking: compare a layer's backward with finite differences.

For a scalar function :math:`f` of an array :math:`a`, the centered difference

.. math::  \\frac{\\partial f}{\\partial a_i} \\approx \\frac{f(a + h e_i) - f(a - h e_i)}{2h}

has error :math:`O(h^2)`. To check a layer we pick a random upstream gradient
``dy`` and use :math:`f(x) = \\sum y(x) \\odot dy`, whose exact gradient is what
``backward(dy)`` must return. Run it in float64: in float32 the rounding error of
:math:`f` swamps the difference.
"""

import numpy as np


def numerical_gradient(f, a, h=1e-6, indices=None):
    """Centered-difference gradient of the scalar ``f()`` with respect to array ``a``.

    ``a`` is perturbed in place, one element at a time, and restored. With
    ``indices`` (flat indices into ``a``) only those entries are estimated and
    returned as a 1-D array, for spot checks of large arrays.
    """
    if indices is None:
        points, grad = list(np.ndindex(a.shape)), np.zeros(a.shape, dtype=np.float64)
    else:
        points, grad = [np.unravel_index(i, a.shape) for i in indices], np.zeros(len(indices), dtype=np.float64)
    for k, i in enumerate(points):  # works for any memory layout, unlike a reshaped view
        original = a[i]
        a[i] = original + h
        f_plus = f()
        a[i] = original - h
        f_minus = f()
        a[i] = original
        grad[i if indices is None else k] = (f_plus - f_minus) / (2 * h)
    return grad


def relative_error(analytic, numeric):
    """``||a - n|| / (||a|| + ||n||)`` over the whole array: 0 when both agree exactly.

    A norm over the whole array, rather than element by element, so that entries
    whose true gradient is zero do not turn rounding noise into huge ratios.
    """
    analytic, numeric = np.asarray(analytic, np.float64), np.asarray(numeric, np.float64)
    denom = np.linalg.norm(analytic) + np.linalg.norm(numeric)
    return float(np.linalg.norm(analytic - numeric) / denom) if denom > 0 else 0.0


def check_layer(layer, x, rng, h=1e-6):
    """Relative errors of ``layer.backward`` against finite differences.

    Returns ``{"x": err, "<param name>": err, ...}`` for the input and every
    parameter. Dropout must be put in eval mode, or given a fixed mask, by the
    caller; the layer and ``x`` should be float64.
    """
    y = layer(x)
    dy = rng.standard_normal(y.shape)

    def f():
        return float(np.sum(layer(x) * dy))

    layer(x)
    for p in layer.parameters():
        p.grad[...] = 0
    dx = layer.backward(dy)
    errors = {"x": relative_error(dx, numerical_gradient(f, x, h))}
    for name, p in layer.named_parameters():
        errors[name] = relative_error(p.grad, numerical_gradient(f, p.data, h))
    return errors
