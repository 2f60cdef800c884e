"""2-D convolution (cross-correlation, as in every deep-learning library)."""

import numpy as np

from .. import backend as B
from ._utils import batch_first, batch_last, matmul_by_blocks, matmul_t_by_blocks, output_size, pair
from .init import default_rng, he_uniform
from .module import Module, Parameter


#: Bytes of ``cols`` (float32) up to which the convolution is one product, its ``cols`` kept for
#: backward; above it, it is computed in blocks of output rows (:data:`BLOCK_BYTES`). In training
#: (chunks of 50 images) the study's cnn (2.9 MB for its second convolution) and ``lenet5`` (at most
#: 4.1 MB) stay whole: there ``cols`` stays in the caches, and blocks (``cols`` built again in
#: backward) made a cnn step 8 % slower. ``cnn-bn``'s second convolution has 5.7 MB (see
#: :data:`BLOCK_BYTES`); so has the cnn's under ``no_grad()``, in pieces of 100 images.
WHOLE_BYTES = 4 << 20

#: Bytes of ``cols`` per block of output rows above :data:`WHOLE_BYTES`: about a core's level-2
#: cache (1 MB on AMD Zen 4). A block's ``cols`` is built, multiplied and dropped while it is in
#: the caches; backward builds it again from the padded input instead of reading a ``cols`` of the
#: whole image back from memory. Quiet 2-core AMD Zen 4, ``cnn-bn`` training steps on 2 threads
#: (its second convolution: 406 KB of ``cols`` per output row), medians of interleaved rounds: one
#: product 14.06 ms against 13.63 ms in blocks of 4 rows; in another run, blocks of 2 rows (812 KB)
#: 13.64 ms, of 4 rows 13.92 ms, of 7 rows 14.6 ms, of 1 row 14.6 ms.
BLOCK_BYTES = 1 << 20

#: Bytes that one kernel offset's copy into a block's ``cols`` must move at least (its ``C`` input
#: channels times the block's output rows, ``OW`` and ``N``); with less, the ``KH*KW`` copies per block
#: are many small NumPy calls, and the layer stays one block. One core of an AMD Zen 4, under
#: ``no_grad()``, 100 images: in blocks of 512 KB to 4 MB, ``lenet5``'s 5x5 convolutions (33 KB and 24 KB
#: per copy in 1 MB blocks) took 0.67-1.19 ms instead of 0.66 ms and 0.78-0.96 ms instead of 0.75 ms;
#: the 3x3 second convolutions of the cnn and ``cnn-bn`` (90 KB per copy) 0.76 ms instead of 0.92 ms and
#: 2.7 ms instead of 4.4 ms.
MIN_COPY_BYTES = 64 << 10


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
    (col2im) in one go.

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

    A large ``cols`` -- more than :data:`WHOLE_BYTES`, ``cnn-bn``'s second
    convolution -- does not stay in the processor's caches between its writing
    and its reading. A training step then computes the layer in **blocks of
    output rows** (:data:`BLOCK_BYTES` of ``cols`` each): forward builds a block's
    ``cols`` and multiplies it at once; backward builds it again from the
    padded input for ``dW`` and ``dcols`` and folds that block's ``dcols`` back
    (col2im) at once. ``dW`` is then a sum over the blocks; every other number
    is computed as in one block. Smaller layers are one block and keep ``cols``,
    as are layers whose blocks would be built from small copies
    (:data:`MIN_COPY_BYTES`: ``lenet5``'s 5x5 kernels) and every layer on a GPU.
    Under ``no_grad()`` (inference) the same blocks are computed and nothing is
    kept, so inference gives the numbers of a training forward.

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

    Cached by forward: the padded input, ``cols`` (with its row of ones) when the
    layer is one block, and the input shape.
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
        (ph, pw) = self.padding
        # Zero padding, batch-last: (C, H + 2ph, W + 2pw, N).
        padded = xp.zeros((c, h + 2 * ph, w + 2 * pw, n), dtype=self.dtype)
        padded[:, ph : ph + h, pw : pw + w] = batch_last(x)
        weight_and_bias = xp.concatenate((self.weight.data.reshape(k, -1), self.bias.data[:, None]), axis=1)
        y = xp.empty((k, oh * ow * n), dtype=self.dtype)  # (K, OH*OW*N)
        blocks = self._blocks(c, oh, ow, n)
        for i0, i1 in blocks:  # one block, the whole image, unless cols is large (WHOLE_BYTES)
            cols = self._im2col(padded, i0, i1, ow)
            matmul_by_blocks(weight_and_bias, cols, out=y[:, i0 * ow * n : i1 * ow * n])
        self._save(padded, cols if len(blocks) == 1 else None, blocks, x.shape)
        return batch_first(y.reshape(k, oh, ow, n))  # (N, K, OH, OW), a view

    def backward(self, dy, input_grad=True):
        """Fill ``weight.grad`` and ``bias.grad``; return ``dx`` (N, C, H, W).

        With ``input_grad=False`` (the first layer of a network, whose input is
        data that needs no gradient) ``dx`` is not computed and None is returned.
        """
        xp = B.xp
        padded, kept, blocks, x_shape = self._saved_tensors()
        n, c, h, w = x_shape
        _, k, oh, ow = dy.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding

        dy_mat = batch_last(dy).reshape(k, oh * ow * n)  # columns (i, j, n), like cols; free if dy is batch-last
        weight_t = self.weight.data.reshape(k, -1).T
        dpadded = xp.zeros_like(padded, dtype=dy.dtype) if input_grad else None
        grad_and_bias_grad = 0  # (K, C*KH*KW + 1): [dW | db], summed over the blocks
        for i0, i1 in blocks:  # those of forward
            cols = kept if kept is not None else self._im2col(padded, i0, i1, ow)
            dy_block = dy_mat[:, i0 * ow * n : i1 * ow * n]
            grad_and_bias_grad = grad_and_bias_grad + matmul_t_by_blocks(dy_block, cols)
            if input_grad:
                # col2im: entry (u, v) of the window at output (i, j) came from padded pixel
                # (i*sh + u, j*sw + v), so for each offset add a whole strided slice at once.
                dcols = matmul_by_blocks(weight_t, dy_block).reshape(c, kh, kw, i1 - i0, ow, n)
                for u in range(kh):
                    for v in range(kw):
                        dpadded[:, u + sh * i0 : u + sh * i1 : sh, v : v + sw * ow : sw] += dcols[:, u, v]
        self.weight.grad += grad_and_bias_grad[:, :-1].reshape(self.weight.data.shape)
        self.bias.grad += grad_and_bias_grad[:, -1]
        if not input_grad:
            return None
        return batch_first(dpadded[:, ph : ph + h, pw : pw + w])  # (N, C, H, W), a view

    def _blocks(self, c, oh, ow, n):
        """The blocks of output rows ``(i0, i1)`` the layer computes in: one, ``(0, OH)``, unless the
        whole ``cols`` would have more than :data:`WHOLE_BYTES`; then about :data:`BLOCK_BYTES` each,
        if each kernel offset's copy into a block moves :data:`MIN_COPY_BYTES` or more. One block on
        a GPU (the caches in question are the CPU's)."""
        kh, kw = self.kernel_size
        itemsize = np.dtype(self.dtype).itemsize
        row_bytes = (c * kh * kw + 1) * ow * n * itemsize  # cols of one output row
        if B.xp is not np or row_bytes * oh <= WHOLE_BYTES:
            return [(0, oh)]
        rows = max(1, BLOCK_BYTES // row_bytes)
        if rows * c * ow * n * itemsize < MIN_COPY_BYTES:  # one offset's copy into a block
            return [(0, oh)]
        return [(i0, min(i0 + rows, oh)) for i0 in range(0, oh, rows)]

    def _im2col(self, padded, i0, i1, ow):
        """``cols`` of output rows ``i0 .. i1 - 1``: rows ``(c, u, v)`` and a last row of ones (it multiplies
        the bias), columns ``(i, j, n)``. Built one kernel offset ``(u, v)`` at a time, a strided slice each."""
        xp = B.xp
        c, _, _, n = padded.shape
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        cols = xp.empty((c * kh * kw + 1, (i1 - i0) * ow * n), dtype=self.dtype)
        patches = cols[:-1].reshape(c, kh, kw, i1 - i0, ow, n)
        for u in range(kh):
            for v in range(kw):
                patches[:, u, v] = padded[:, u + sh * i0 : u + sh * i1 : sh, v : v + sw * ow : sw]  # (C, rows, OW, N)
        cols[-1] = 1
        return cols

    def extra_repr(self):
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}"
        )
