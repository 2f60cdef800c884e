"""2-D max pooling."""

from .. import backend as B
from ._utils import output_size, pair
from .module import Module, grad_enabled


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

    The output has the input's dtype (the layer owns no parameters).

    Shape
    -----
    x : (N, C, H, W) -> y : (N, C, OH, OW)

    Cached by forward: a list ``took_over`` with, for each window offset
    ``k = u * KW + v`` after the first (at index ``k - 1``), a boolean array
    (N, C, OH, OW) telling where entry ``k`` was *strictly* larger than every
    earlier entry of its window; and
    the input (only for its shape and memory layout).

    Implementation: both directions loop over the ``KH*KW`` offsets ``(u, v)``
    inside the window, never over pixels. For one offset, that entry of every
    window is a strided slice of the input, ``x[:, :, u : u + s_h*OH : s_h, v : v + s_w*OW : s_w]``.
    Forward keeps a running maximum over the slices. A window's first maximum
    is the *last* entry that took over (a later equal value does not take
    over), or entry 0 if none did; backward walks the offsets from the last to
    the first, keeping the windows not yet claimed by a later offset, so the
    routing costs two boolean operations per offset (on one byte per window)
    instead of an argmax over each window.
    """

    def __init__(self, kernel_size, stride=None):
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(kernel_size if stride is None else stride, "stride")

    def _entry(self, x, u, v, oh, ow):
        """Entry (u, v) of every window: a strided view of ``x``, shape (N, C, OH, OW)."""
        sh, sw = self.stride
        return x[:, :, u : u + sh * oh : sh, v : v + sw * ow : sw]

    def _offsets(self):
        kh, kw = self.kernel_size
        return [(u, v) for u in range(kh) for v in range(kw)]  # row-major: the order ties are broken in

    def forward(self, x):
        xp = B.xp
        _, _, h, w = x.shape
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        oh = output_size(h, kh, sh, 0, "MaxPool2d height")
        ow = output_size(w, kw, sw, 0, "MaxPool2d width")
        first, *rest = self._offsets()
        y = self._entry(x, *first, oh, ow).copy(order="K")  # "K": keep x's memory layout
        took_over = []
        for u, v in rest:
            entry = self._entry(x, u, v, oh, ow)
            if grad_enabled():
                took_over.append(entry > y)  # strictly: on a tie the earlier entry stays the maximum
            xp.maximum(y, entry, out=y)
        self._save(took_over, x)
        return y

    def backward(self, dy):
        xp = B.xp
        took_over, x = self._saved_tensors()
        _, _, oh, ow = dy.shape
        first, *rest = self._offsets()
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        overlapping = sh < kh or sw < kw
        # When the windows tile x exactly, the routes below write every element of dx once
        # (dy or 0), so it needs no zero fill. empty_like/zeros_like keep x's memory layout.
        tiles = (sh, sw) == (kh, kw) and x.shape[2:] == (oh * sh, ow * sw)
        dx = (xp.empty_like if tiles else xp.zeros_like)(x, dtype=dy.dtype)

        def route(u, v, chosen):
            """Send dy to entry (u, v) of the windows where ``chosen`` is True."""
            target = self._entry(dx, u, v, oh, ow)
            if overlapping:  # several windows may pick the same pixel: accumulate
                target += dy * chosen
            else:  # each pixel belongs to one window: write in place, no temporary
                xp.multiply(dy, chosen, out=target)

        # Walk the offsets backwards: a window's maximum is at the last entry that took over.
        # `unclaimed`: the windows whose maximum is not at a later offset (None: all of them).
        unclaimed = None
        for (u, v), larger in zip(reversed(rest), reversed(took_over)):
            if unclaimed is None:
                route(u, v, larger)
                unclaimed = ~larger
            else:
                route(u, v, larger & unclaimed)
                xp.greater(unclaimed, larger, out=unclaimed)  # for booleans a > b is "a and not b"
        route(*first, unclaimed if unclaimed is not None else xp.ones_like(dy, dtype=bool))
        return dx

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}"
