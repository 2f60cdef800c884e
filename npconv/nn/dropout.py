"""Inverted dropout."""

from .. import backend as B
from .init import default_rng
from .module import Module


class Dropout(Module):
    """Inverted dropout: zero each element with probability ``p`` while training.

    In training mode, with a fresh mask :math:`m_i \\sim \\text{Bernoulli}(1 - p)`:

    .. math::  y = x \\odot m / (1 - p), \\qquad dx = dy \\odot m / (1 - p)

    Dividing by ``1 - p`` keeps the expected value of every unit unchanged, so
    in evaluation mode (``model.eval()``) dropout is simply the identity.
    ``p`` is the probability of *dropping*, as in PyTorch.

    Parameters
    ----------
    p : float in [0, 1)
    rng : numpy.random.Generator, optional -- source of the masks

    The mask, and so the output, has the input's dtype (the layer owns no
    parameters): in float64 the scale ``1 / (1 - p)`` is exact to float64.

    Shape: any -> the same shape.

    Cached by forward (training mode): the scaled mask ``m / (1 - p)``.
    """

    def __init__(self, p=0.5, *, rng=None):
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.rng = default_rng(rng)

    def forward(self, x):
        if not self.training or self.p == 0:
            self._save(None)
            return x
        keep = self.rng.random(x.shape) >= self.p
        dtype = x.dtype if x.dtype.kind == "f" else B.resolve_dtype(None)  # integer pixels are scaled in floats
        scaled_mask = B.xp.asarray(keep, dtype=dtype) / dtype.type(1 - self.p)
        self._save(scaled_mask)
        return x * scaled_mask

    def backward(self, dy):
        (scaled_mask,) = self._saved_tensors()
        return dy if scaled_mask is None else dy * scaled_mask

    def extra_repr(self):
        return f"p={self.p}"
