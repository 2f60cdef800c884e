"""2-D average pooling."""

from .. import backend as B
from ._utils import output_size, pair
from .module import Module


class AvgPool2d(Module):
    """2-D average pooling over NCHW images.

    .. math::

        y[n, c, i, j] = \\frac{1}{KH \\cdot KW} \\sum_{u < KH, \\; v < KW}
                        x_p[n, c, \\; i \\cdot s_h + u, \\; j \\cdot s_w + v]

    where :math:`x_p` is the input zero-padded by ``padding`` on each side. As
    PyTorch's default (``count_include_pad=True``), a window that overlaps the
    padding still divides by ``KH*KW``. Output size::

        OH = (H + 2*padding - KH) // stride + 1,   OW = (W + 2*padding - KW) // stride + 1

    Backward spreads each window's gradient evenly over its entries,
    :math:`dx_p[\\text{window}] \\mathrel{+}= dy / (KH \\cdot KW)`; windows that
    overlap (stride < kernel) add up, and what lands on the padding is dropped.

    Parameters
    ----------
    kernel_size : int or (int, int)
    stride : int or (int, int), optional -- defaults to ``kernel_size``
    padding : int or (int, int) -- at most half the kernel size, as in PyTorch

    The output has the input's dtype (the layer owns no parameters).

    Shape
    -----
    x : (N, C, H, W) -> y : (N, C, OH, OW)

    Cached by forward: the input's shape.

    Implementation: as MaxPool2d, both directions loop over the ``KH*KW``
    offsets ``(u, v)`` inside the window, never over pixels; for one offset,
    that entry of every window is the strided slice
    ``x_p[:, :, u : u + s_h*OH : s_h, v : v + s_w*OW : s_w]``.
    """

    def __init__(self, kernel_size, stride=None, padding=0):
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(kernel_size if stride is None else stride, "stride")
        self.padding = pair(padding, "padding")
        if any(s < 1 for s in self.stride):
            raise ValueError(f"stride must be >= 1, got {stride!r}")
        if any(not 0 <= 2 * p <= k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"padding must be between 0 and half the kernel size {self.kernel_size}, got {padding!r}")

    def _output_size(self, h, w):
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return output_size(h, kh, sh, ph, "AvgPool2d height"), output_size(w, kw, sw, pw, "AvgPool2d width")

    def _window_entries(self, a, oh, ow):
        """Entry (u, v) of every window of the padded ``a``, for each offset: strided views (N, C, OH, OW)."""
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        for u in range(kh):
            for v in range(kw):
                yield a[:, :, u : u + sh * oh : sh, v : v + sw * ow : sw]

    def forward(self, x):
        x = B.xp.asarray(x)
        if x.dtype.kind != "f":  # integer pixels are averaged in floats
            x = x.astype(B.resolve_dtype(None))
        n, c, h, w = x.shape
        oh, ow = self._output_size(h, w)
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        padded = B.xp.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
        padded[:, :, ph : ph + h, pw : pw + w] = x
        first, *rest = self._window_entries(padded, oh, ow)
        y = first.copy()
        for entry in rest:
            y += entry
        y *= x.dtype.type(1 / (kh * kw))
        self._save(x.shape)
        return y

    def backward(self, dy):
        ((n, c, h, w),) = self._saved_tensors()
        _, _, oh, ow = dy.shape
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        share = dy * dy.dtype.type(1 / (kh * kw))  # what each entry of a window receives
        dx_padded = B.xp.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=dy.dtype)
        for entry in self._window_entries(dx_padded, oh, ow):
            entry += share
        return dx_padded[:, :, ph : ph + h, pw : pw + w]

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
