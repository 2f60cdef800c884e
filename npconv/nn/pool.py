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
    """

    def __init__(self, kernel_size, stride=None, *, dtype=None):
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(kernel_size if stride is None else stride, "stride")
        self.dtype = B.resolve_dtype(dtype)

    def forward(self, x):
        xp = B.xp
        n, c, h, w = x.shape
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        oh = output_size(h, kh, sh, 0, "MaxPool2d height")
        ow = output_size(w, kw, sw, 0, "MaxPool2d width")
        # windows[n, c, i, j] is the KHxKW window with top-left corner (i*sh, j*sw),
        # flattened row-major so argmax's "first occurrence" is PyTorch's first maximum.
        windows = B.windows(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
        flat = windows.reshape(n, c, oh, ow, kh * kw)
        argmax = flat.argmax(axis=-1)
        y = xp.take_along_axis(flat, argmax[..., None], axis=-1)[..., 0]
        self._save(argmax, x.shape)
        return y

    def backward(self, dy):
        xp = B.xp
        argmax, x_shape = self._saved_tensors()
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        _, _, oh, ow = dy.shape
        dx = xp.zeros(x_shape, dtype=dy.dtype)
        # For each offset (u, v) inside the window, the windows whose maximum sits
        # there send their dy to input pixel (i*sh + u, j*sw + v): a strided slice.
        # "+=" because overlapping windows (stride < kernel) can pick the same pixel.
        for u in range(kh):
            for v in range(kw):
                chosen = argmax == u * kw + v
                dx[:, :, u : u + sh * oh : sh, v : v + sw * ow : sw] += xp.where(chosen, dy, 0)
        return dx

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}"
