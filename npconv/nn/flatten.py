"""Flatten: (N, d1, d2, ...) -> (N, d1*d2*...)."""

from .module import Module


class Flatten(Module):
    """Flatten every dimension but the batch: ``(N, C, H, W) -> (N, C*H*W)``.

    Backward reshapes ``dy`` back to the input's shape. Cached: the input shape.
    """

    def forward(self, x):
        self._save(x.shape)
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        (shape,) = self._saved_tensors()
        return dy.reshape(shape)
