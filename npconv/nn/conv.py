"""2-D convolution (cross-correlation, as in every deep-learning library)."""

from .. import backend as B
from ._utils import batch_first, batch_last, matmul_by_blocks, matmul_t_by_blocks, output_size, pair
from .init import default_rng, he_uniform
from .module import Module, Parameter


#: Input channels whose rows of ``dcols`` backward computes and folds back (col2im) at a time.
#: The rows of 4 channels of ``cnn-bn``'s second convolution, a chunk of 50 images, are 1.4 MB:
#: they are still in the processor's caches when col2im adds them, where all 16 channels' (5.6 MB)
#: went out to memory and back. Quiet 2-core AMD Zen 4, ``cnn-bn`` training steps on 2 threads,
#: 8 interleaved rounds: 14.05 ms median with all channels at once, 13.62 ms with 4, 13.74 ms with
#: 8; the study's cnn (8 channels) 4.87 / 4.91 ms. Every model gave the same bits either way here
#: (each entry of dcols is the same sum over the output channels, whichever rows are computed with it).
COL2IM_CHANNELS = 4


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
    one matrix product with the weights reshaped to ``Wm`` of shape ``(K, C*KH*KW)``::

        cols : (C*KH*KW, OH*OW*N)       cols[(c, u, v), (i, j, n)] = x_p[n, c, i*s_h + u, j*s_w + v]
        y    = Wm @ cols + b             (K, OH*OW*N), seen as (N, K, OH, OW)
        dW   = dy @ cols^T               (K, C*KH*KW)
        db   = sum of dy over N, OH, OW  (K,)
        dcols = Wm^T @ dy                (C*KH*KW, OH*OW*N)

    and ``dx`` is ``dcols`` folded back onto the image (col2im): every patch
    entry is added to the input pixel it came from. Patches overlap, so a pixel
    receives a contribution from every window that covers it.

    Both directions loop over the ``KH*KW`` kernel offsets ``(u, v)``, never over
    pixels: for one offset, the entries of every patch form a strided slice of
    the padded image, ``x_p[:, :, u : u + s_h*OH : s_h, v : v + s_w*OW : s_w]``, copied (im2col) or added
    (col2im) in one go. Backward computes ``dcols`` and folds it back a few input
    channels at a time (:data:`COL2IM_CHANNELS`), so that those rows of ``dcols``
    are still in the caches when they are added.

    The bias rides along in the products: ``cols`` gets one more row, all ones,
    and the weights one more column, ``b``, so ``y = [Wm | b] @ [cols; 1]`` and
    ``[dW | db] = dy @ [cols; 1]^T`` -- no separate pass to add ``b`` or to sum ``dy``.

    The speed trick -- **batch-last memory**. Inside the layer, images are
    stored as ``(C, H, W, N)``: the batch is the fastest-moving axis. Then, for
    stride 1, one image row of every image is one contiguous run of ``W*N``
    numbers, so each im2col copy and col2im add moves long runs instead of a
    few pixels at a time; a pooling window's entries are runs of ``N``. The
    columns of ``cols`` are ordered ``(i, j, n)`` to match, so the product
    ``Wm @ cols`` comes out batch-last too, and it is returned without a copy as
    an ``(N, K, OH, OW)`` view (:func:`~npconv.nn._utils.batch_first`).
    Element-wise layers and MaxPool2d keep that layout, backward gets ``dy``
    back in it, and the next Conv2d takes it as it is. An ordinary
    ``(N, C, H, W)`` array (the data) is rearranged once, at the first layer.
    Only memory order changes: the value at ``y[n, k, i, j]`` is the formula above.

    The three products are long and thin -- ``cols`` has ``OH*OW*N`` columns
    (78,400 and 19,600 for the study's two layers at batch 100), the other sizes
    are 8 to 73 -- and are computed as stacks of small products
    (:func:`~npconv.nn._utils.matmul_by_blocks` for ``Wm @ cols`` and ``Wm^T @ dy``,
    :func:`~npconv.nn._utils.matmul_t_by_blocks` for ``dy @ cols^T``, a sum over
    blocks of columns) where the BLAS computes small products faster.

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

    Cached by forward: ``cols`` (with its row of ones) and the input shape.
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
        k = self.out_channels
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        # Zero padding, batch-last: (C, H + 2ph, W + 2pw, N).
        padded = xp.zeros((c, h + 2 * ph, w + 2 * pw, n), dtype=self.dtype)
        padded[:, ph : ph + h, pw : pw + w] = batch_last(x)
        # im2col, one kernel offset (u, v) at a time: rows (c, u, v), columns (i, j, n);
        # then the row of ones that multiplies the bias.
        cols = xp.empty((c * kh * kw + 1, oh * ow * n), dtype=self.dtype)
        patches = cols[:-1].reshape(c, kh, kw, oh, ow, n)
        for u in range(kh):
            for v in range(kw):
                patches[:, u, v] = padded[:, u : u + sh * oh : sh, v : v + sw * ow : sw]  # (C, OH, OW, N)
        cols[-1] = 1
        weight_and_bias = xp.concatenate((self.weight.data.reshape(k, -1), self.bias.data[:, None]), axis=1)
        y = matmul_by_blocks(weight_and_bias, cols)  # (K, OH*OW*N)
        self._save(cols, x.shape)
        return batch_first(y.reshape(k, oh, ow, n))  # (N, K, OH, OW), a view

    def backward(self, dy, input_grad=True):
        """Fill ``weight.grad`` and ``bias.grad``; return ``dx`` (N, C, H, W).

        With ``input_grad=False`` (the first layer of a network, whose input is
        data that needs no gradient) ``dx`` is not computed and None is returned.
        """
        xp = B.xp
        cols, x_shape = self._saved_tensors()
        n, c, h, w = x_shape
        _, k, oh, ow = dy.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding

        dy_mat = batch_last(dy).reshape(k, oh * ow * n)  # columns (i, j, n), like cols; free if dy is batch-last
        grad_and_bias_grad = matmul_t_by_blocks(dy_mat, cols)  # (K, C*KH*KW + 1): [dW | db]
        self.weight.grad += grad_and_bias_grad[:, :-1].reshape(self.weight.data.shape)
        self.bias.grad += grad_and_bias_grad[:, -1]
        if not input_grad:
            return None
        # dcols = Wm^T @ dy, then col2im: entry (u, v) of the window at output (i, j) came from
        # padded pixel (i*sh + u, j*sw + v), so for each offset add a whole strided slice at once.
        # Both a few input channels at a time (COL2IM_CHANNELS): their rows of dcols are still
        # in the processor's caches when they are added.
        weight = self.weight.data.reshape(k, c, kh * kw)
        dpadded = xp.zeros((c, h + 2 * ph, w + 2 * pw, n), dtype=dy.dtype)
        for c0 in range(0, c, COL2IM_CHANNELS):
            group = slice(c0, min(c0 + COL2IM_CHANNELS, c))
            dcols = matmul_by_blocks(weight[:, group].reshape(k, -1).T, dy_mat).reshape(-1, kh, kw, oh, ow, n)
            for u in range(kh):
                for v in range(kw):
                    dpadded[group, u : u + sh * oh : sh, v : v + sw * ow : sw] += dcols[:, u, v]
        return batch_first(dpadded[:, ph : ph + h, pw : pw + w])  # (N, C, H, W), a view

    def extra_repr(self):
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}"
        )
