"""Flatten: (N, d1, d2, ...) -> (N, d1*d2*...)."""

from ._utils import reshape_batch
from .module import Module


class Flatten(Module):
    """Flatten every dimension but the batch: ``(N, C, H, W) -> (N, C*H*W)``.

    Backward reshapes ``dy`` back to the input's shape. Cached: the input shape.

    Both directions keep the memory layout: the batch-last output of a
    Conv2d (see its docstring) flattens to a batch-last ``(N, C*H*W)`` view,
    which a Linear layer multiplies as it is, without a copy.
    """

    def forward(self, x):
        self._save(x.shape)
        return reshape_batch(x, (-1,))

    def backward(self, dy):
        (shape,) = self._saved_tensors()
        return reshape_batch(dy, shape[1:])
