"""Element-wise activations: ReLU, Sigmoid, Tanh.

Each maps any shape to the same shape and dtype, and keeps one array for backward.
They own no parameters, so they take no ``dtype``: they follow their input's.
"""

from .. import backend as B
from .module import Module, grad_enabled


class ReLU(Module):
    """Rectified linear unit: :math:`y = \\max(x, 0)`.

    Backward: :math:`dx = dy \\cdot [x > 0]` (the gradient at exactly 0 is 0,
    as in PyTorch).

    Cached by forward: the boolean mask ``x > 0``.
    """

    def forward(self, x):
        self._save(x > 0 if grad_enabled() else None)  # no mask needed under no_grad()
        return B.xp.maximum(x, 0)  # not x * mask: -inf * 0 would be NaN

    def backward(self, dy):
        (mask,) = self._saved_tensors()
        return dy * mask


class Sigmoid(Module):
    """Logistic sigmoid: :math:`y = 1 / (1 + e^{-x})`.

    Written so that ``exp`` never overflows: with :math:`z = e^{-|x|} \\in (0, 1]`,

    .. math::  y = 1 / (1 + z) \\text{ if } x \\ge 0, \\qquad y = z / (1 + z) \\text{ if } x < 0

    Backward: :math:`dx = dy \\cdot y (1 - y)`.

    Cached by forward: the output ``y``.
    """

    def forward(self, x):
        xp = B.xp
        z = xp.exp(-xp.abs(x))
        y = xp.where(x >= 0, 1 / (1 + z), z / (1 + z))
        self._save(y)
        return y

    def backward(self, dy):
        (y,) = self._saved_tensors()
        return dy * y * (1 - y)


class Tanh(Module):
    """Hyperbolic tangent: :math:`y = \\tanh x`; backward :math:`dx = dy (1 - y^2)`.

    Cached by forward: the output ``y``.
    """

    def forward(self, x):
        y = B.xp.tanh(x)
        self._save(y)
        return y

    def backward(self, dy):
        (y,) = self._saved_tensors()
        return dy * (1 - y * y)
