"""Fully connected layer."""

from .. import backend as B
from .init import default_rng, he_uniform
from .module import Module, Parameter


class Linear(Module):
    """Fully connected (affine) layer: :math:`y = x W^T + b`.

    Forward, for a batch of N row vectors::

        y[n, o] = sum_i x[n, i] * W[o, i] + b[o]

    Backward, given ``dy = dL/dy``::

        dW = dy^T x        (out_features, in_features)
        db = sum_n dy[n]   (out_features,)
        dx = dy W          (N, in_features)

    Parameters
    ----------
    in_features, out_features : int
    rng : numpy.random.Generator, optional
        Source of the He-uniform initial weights (see :mod:`npconv.nn.init`).
    dtype : float32 (default) or float64

    Shape
    -----
    x : (N, in_features) -> y : (N, out_features)

    Attributes
    ----------
    weight : Parameter (out_features, in_features), He-uniform
    bias : Parameter (out_features,), zeros

    Cached by forward: the input ``x`` (needed for ``dW``).
    """

    def __init__(self, in_features, out_features, *, rng=None, dtype=None):
        self.in_features = in_features
        self.out_features = out_features
        self.dtype = B.resolve_dtype(dtype)
        rng = default_rng(rng)
        self.weight = Parameter(he_uniform((out_features, in_features), in_features, rng, self.dtype))
        self.bias = Parameter(B.xp.zeros(out_features, dtype=self.dtype))

    def forward(self, x):
        x = B.xp.asarray(x, dtype=self.dtype)
        self._save(x)
        return x @ self.weight.data.T + self.bias.data

    def backward(self, dy, input_grad=True):
        """Fill ``weight.grad`` and ``bias.grad``; return ``dx`` (or None if not ``input_grad``)."""
        (x,) = self._saved_tensors()
        self.weight.grad += dy.T @ x
        self.bias.grad += dy.sum(axis=0)
        if not input_grad:
            return None
        return dy @ self.weight.data

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}"
