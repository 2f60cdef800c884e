"""2-D max pooling."""

from .. import backend as B
from ._utils import output_size, pair
from .module import Module


class MaxPool2d(Module):
    """2-D max pooling over NCHW images.

    .. math::  y[n, c, i, j] = \\max_{u < KH, \\; v < KW} x[n, c, \\; i \\cdot s_h + u, \\; j \\cdot s_w + v]

    Output size (no padding; a partial window at the border is dropped)::

        OH = (H - KH) // stride + 1,   OW = (W - KW) // stride + 1

    Backward routes each window's gradient to exactly **one** input element: the
    first maximum of the window in row-major order, as PyTorch does. On MNIST
    whole windows of blank background are exactly equal; sending the gradient
    to every tied element would multiply it and be a wrong gradient.

    Parameters
    ----------
    kernel_size : int or (int, int)
    stride : int or (int, int), optional -- defaults to ``kernel_size``
    dtype : float32 (default) or float64 (accepted for a uniform API; the
        output has the input's dtype)

    Shape
    -----
    x : (N, C, H, W) -> y : (N, C, OH, OW)

    Cached by forward: ``argmax`` (N, C, OH, OW), the row-major index
    ``u * KW + v`` of each window's first maximum, and the input shape.

    Implementation: both directions loop over the ``KH*KW`` offsets ``(u, v)``
    inside the window, never over pixels. For one offset, that entry of every
    window is a strided slice of the input, ``x[:, :, u::s_h, v::s_w]``; forward
    keeps a running maximum over the slices, replacing it only where a later
    entry is *strictly* larger, which is what keeps the first maximum.
    """

    def __init__(self, kernel_size, stride=None, *, dtype=None):
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(kernel_size if stride is None else stride, "stride")
        self.dtype = B.resolve_dtype(dtype)

    def _entry(self, x, u, v, oh, ow):
        """Entry (u, v) of every window: a strided view of ``x``, shape (N, C, OH, OW)."""
        sh, sw = self.stride
        return x[:, :, u : u + sh * oh : sh, v : v + sw * ow : sw]

    def forward(self, x):
        xp = B.xp
        _, _, h, w = x.shape
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        oh = output_size(h, kh, sh, 0, "MaxPool2d height")
        ow = output_size(w, kw, sw, 0, "MaxPool2d width")
        y = self._entry(x, 0, 0, oh, ow).copy()
        argmax = xp.zeros(y.shape, dtype=xp.int16)
        for u in range(kh):
            for v in range(kw):
                if u == v == 0:
                    continue
                entry = self._entry(x, u, v, oh, ow)
                larger = entry > y  # strictly: on a tie the earlier entry stays the maximum
                xp.copyto(y, entry, where=larger)
                xp.copyto(argmax, u * kw + v, where=larger)
        self._save(argmax, x.shape)
        return y

    def backward(self, dy):
        xp = B.xp
        argmax, x_shape = self._saved_tensors()
        kh, kw = self.kernel_size
        _, _, oh, ow = dy.shape
        dx = xp.zeros(x_shape, dtype=dy.dtype)
        # The windows whose maximum sits at offset (u, v) send their dy to that entry.
        # "+=" because overlapping windows (stride < kernel) can pick the same pixel.
        for u in range(kh):
            for v in range(kw):
                self._entry(dx, u, v, oh, ow)[...] += xp.where(argmax == u * kw + v, dy, 0)
        return dx

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}"
