"""2-D convolution (cross-correlation, as in every deep-learning library)."""

from .. import backend as B
from ._utils import output_size, pair
from .init import default_rng, he_uniform
from .module import Module, Parameter


class Conv2d(Module):
    """2-D convolution over NCHW images.

    .. math::

        y[n, k, i, j] = b[k] + \\sum_{c, u, v} W[k, c, u, v] \\;
                        x_p[n, c, \\; i \\cdot s_h + u, \\; j \\cdot s_w + v]

    where :math:`x_p` is the input zero-padded by ``padding`` on each side and
    :math:`(s_h, s_w)` the stride. The output size is::

        OH = (H + 2*padding - KH) // stride + 1
        OW = (W + 2*padding - KW) // stride + 1

    Implementation -- im2col: each output pixel's receptive field (a ``C*KH*KW``
    patch) becomes one column of a matrix ``cols``, so the whole convolution is
    one matrix product with the weights reshaped to ``Wm`` of shape ``(K, C*KH*KW)``,
    for every image ``n``::

        cols[n] : (C*KH*KW, OH*OW)     cols[n][(c, u, v), (i, j)] = x_p[n, c, i*s_h + u, j*s_w + v]
        y[n]    = Wm @ cols[n] + b     (K, OH*OW), seen as (K, OH, OW)
        dW      = sum_n dy[n] @ cols[n]^T          (K, C*KH*KW)
        db      = sum of dy over N, OH, OW         (K,)
        dcols[n] = Wm^T @ dy[n]                    (C*KH*KW, OH*OW)

    and ``dx`` is ``dcols`` folded back onto the image (col2im): every patch
    entry is added to the input pixel it came from. Patches overlap, so a pixel
    receives a contribution from every window that covers it.

    Both directions loop over the ``KH*KW`` kernel offsets ``(u, v)``, never over
    pixels: for one offset, the entries of every patch form a strided slice of
    the padded image, ``x_p[:, :, u : u + s_h*OH : s_h, v : v + s_w*OW : s_w]``, copied
    (im2col) or added (col2im) in one go. ``npconv/nn/reference.py`` computes the
    same with a loop over every output pixel; the engine (:mod:`npconv.engine.conv`)
    computes it faster.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size, stride, padding : int or (int, int)
    rng : numpy.random.Generator, optional -- source of He-uniform weights
    dtype : float32 (default) or float64

    Shape
    -----
    x : (N, C, H, W) -> y : (N, K, OH, OW), with C = in_channels, K = out_channels

    Attributes
    ----------
    weight : Parameter (K, C, KH, KW), He-uniform with fan_in = C*KH*KW
    bias : Parameter (K,), zeros

    Cached by forward: ``cols`` (N, C*KH*KW, OH*OW) and the input shape.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, *, rng=None, dtype=None):
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride, "stride")
        self.padding = pair(padding, "padding")
        self.dtype = B.resolve_dtype(dtype)
        kh, kw = self.kernel_size
        fan_in = in_channels * kh * kw
        rng = default_rng(rng)
        self.weight = Parameter(he_uniform((out_channels, in_channels, kh, kw), fan_in, rng, self.dtype))
        self.bias = Parameter(B.xp.zeros(out_channels, dtype=self.dtype))

    def _output_shape(self, x_shape):
        """``(N, OH, OW)`` for an input of ``x_shape``; a clear error for a wrong channel count or a too small image."""
        n, c, h, w = x_shape
        if c != self.in_channels:
            raise ValueError(f"Conv2d expected {self.in_channels} input channels, got {c}")
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return n, output_size(h, kh, sh, ph, "Conv2d height"), output_size(w, kw, sw, pw, "Conv2d width")

    def forward(self, x):
        xp = B.xp
        x = xp.asarray(x, dtype=self.dtype)
        n, oh, ow = self._output_shape(x.shape)
        _, c, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        padded = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=self.dtype)
        padded[:, :, ph : ph + h, pw : pw + w] = x
        # im2col: for each kernel offset (u, v), that entry of every patch is one strided slice.
        patches = xp.empty((n, c, kh, kw, oh, ow), dtype=self.dtype)
        for u in range(kh):
            for v in range(kw):
                patches[:, :, u, v] = padded[:, :, u : u + sh * oh : sh, v : v + sw * ow : sw]
        cols = patches.reshape(n, c * kh * kw, oh * ow)
        weight = self.weight.data.reshape(self.out_channels, -1)  # Wm (K, C*KH*KW)
        y = weight @ cols + self.bias.data[:, None]  # one product per image: (N, K, OH*OW)
        self._save(cols, x.shape)
        return y.reshape(n, self.out_channels, oh, ow)

    def backward(self, dy, input_grad=True):
        """Fill ``weight.grad`` and ``bias.grad``; return ``dx`` (N, C, H, W).

        With ``input_grad=False`` (the first layer of a network, whose input is
        data that needs no gradient) ``dx`` is not computed and None is returned.
        """
        xp = B.xp
        cols, (n, c, h, w) = self._saved_tensors()
        _, k, oh, ow = dy.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        dy_mat = dy.reshape(n, k, oh * ow)
        self.weight.grad += (dy_mat @ cols.transpose(0, 2, 1)).sum(axis=0).reshape(self.weight.data.shape)
        self.bias.grad += dy.sum(axis=(0, 2, 3))
        if not input_grad:
            return None
        weight = self.weight.data.reshape(k, -1)
        dcols = (weight.T @ dy_mat).reshape(n, c, kh, kw, oh, ow)  # Wm^T @ dy[n] for every image
        # col2im: entry (u, v) of the window at output (i, j) came from padded pixel (i*sh + u, j*sw + v).
        dpadded = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=dy.dtype)
        for u in range(kh):
            for v in range(kw):
                dpadded[:, :, u : u + sh * oh : sh, v : v + sw * ow : sw] += dcols[:, :, u, v]
        return dpadded[:, :, ph : ph + h, pw : pw + w]

    def extra_repr(self):
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}"
        )
