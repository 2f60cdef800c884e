"""The convolution kernel: :class:`~npconv.nn.Conv2d`'s im2col, with batch-last memory, the bias in the
product, products in blocks, and large layers in blocks of output rows.

What it computes is :class:`npconv.nn.Conv2d`'s formula; how:

* **batch-last memory** (:mod:`npconv.engine.layout`): the padded input is stored
  ``(C, H, W, N)`` and the columns of ``cols`` are ordered ``(i, j, n)``, so each
  im2col copy and col2im add moves runs of ``W*N`` numbers and the product
  ``Wm @ cols`` comes out batch-last, returned as an ``(N, K, OH, OW)`` view;
* **the bias rides along in the products**: ``cols`` gets one more row, all ones,
  and the weights one more column, ``b``, so ``y = [Wm | b] @ [cols; 1]`` and
  ``[dW | db] = dy @ [cols; 1]^T`` -- no separate pass to add ``b`` or to sum ``dy``;
* **products in blocks** (:mod:`npconv.engine.products`);
* **blocks of output rows** for a large ``cols`` (more than :data:`WHOLE_BYTES`):
  forward builds a block's ``cols`` and multiplies it at once; backward builds it
  again from the padded input instead of reading a ``cols`` of the whole image
  back from memory. ``dW`` is then a sum over the blocks; every other number is
  computed as in one block. Under ``no_grad()`` the same blocks are computed and
  nothing is kept, so inference gives the numbers of a training forward.

The measurements behind the constants are in ``docs/performance.md``.
"""

import numpy as np

from .. import backend as B
from . import plan as plan_module
from .kernels import Kernel
from .layout import batch_first, batch_last
from .products import matmul_by_blocks, matmul_t_by_blocks

#: Bytes of ``cols`` up to which the convolution is one product, its ``cols`` kept for backward: below
#: it ``cols`` stays in the caches between forward and backward (docs/performance.md, "row blocks").
WHOLE_BYTES = 4 << 20

#: Bytes of ``cols`` per block of output rows above :data:`WHOLE_BYTES`: about a core's level-2 cache
#: (docs/performance.md, "row blocks").
BLOCK_BYTES = 1 << 20

#: Bytes that one kernel offset's copy into a block's ``cols`` must move at least; with less the copies
#: are many small NumPy calls, and the layer stays one block (docs/performance.md, "row blocks").
MIN_COPY_BYTES = 64 << 10


class Conv2dKernel(Kernel):
    """:class:`~npconv.nn.Conv2d` the engine's way (see the module docstring).

    ``cols`` : (C*KH*KW + 1, rows*OW*N), ``cols[(c, u, v), (i, j, n)] = x_p[n, c, i*s_h + u, j*s_w + v]``,
    its last row all ones. Cached by forward: the padded input (C, H + 2ph, W + 2pw, N), ``cols``
    when the layer is one block, the blocks and the input shape.
    """

    def forward(self, x):
        layer, xp = self.layer, B.xp
        x = xp.asarray(x, dtype=layer.dtype)
        n, oh, ow = layer._output_shape(x.shape)
        _, c, h, w = x.shape
        k = layer.out_channels
        (ph, pw) = layer.padding
        # Zero padding, batch-last: (C, H + 2ph, W + 2pw, N).
        padded = xp.zeros((c, h + 2 * ph, w + 2 * pw, n), dtype=layer.dtype)
        padded[:, ph : ph + h, pw : pw + w] = batch_last(x)
        weight_and_bias = xp.concatenate((self.weight.data.reshape(k, -1), self.bias.data[:, None]), axis=1)
        y = xp.empty((k, oh * ow * n), dtype=layer.dtype)  # (K, OH*OW*N)
        blocks = self._blocks(c, oh, ow, n)
        for i0, i1 in blocks:  # one block, the whole image, unless cols is large (WHOLE_BYTES)
            cols = self._im2col(padded, i0, i1, ow)
            matmul_by_blocks(weight_and_bias, cols, out=y[:, i0 * ow * n : i1 * ow * n])
        self._save(padded, cols if len(blocks) == 1 else None, blocks, x.shape)
        return batch_first(y.reshape(k, oh, ow, n))  # (N, K, OH, OW), a view

    def backward(self, dy, input_grad=True):
        xp = B.xp
        padded, kept, blocks, x_shape = self._saved_tensors()
        n, c, h, w = x_shape
        _, k, oh, ow = dy.shape
        (kh, kw), (sh, sw), (ph, pw) = self.layer.kernel_size, self.layer.stride, self.layer.padding

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

    def row_blocks(self, x_shape):
        """The blocks of output rows ``(i0, i1)`` forward computes an input of ``x_shape`` (N, C, H, W) in, under
        the running plan: what :mod:`npconv.engine.planner` compares its candidates by."""
        n, oh, ow = self.layer._output_shape(x_shape)
        return self._blocks(x_shape[1], oh, ow, n)

    def _blocks(self, c, oh, ow, n):
        """The blocks of output rows ``(i0, i1)`` the layer computes in: one, ``(0, OH)``, unless the
        whole ``cols`` would have more than :data:`WHOLE_BYTES` (or the running plan's ``whole_bytes``,
        :mod:`npconv.engine.plan`); then about :data:`BLOCK_BYTES` (the plan's ``block_bytes``) each,
        if each kernel offset's copy into a block moves :data:`MIN_COPY_BYTES` or more. One block on
        a GPU (the caches in question are the CPU's)."""
        kh, kw = self.layer.kernel_size
        itemsize = np.dtype(self.layer.dtype).itemsize
        row_bytes = (c * kh * kw + 1) * ow * n * itemsize  # cols of one output row
        plan = plan_module.current()
        whole, block = (WHOLE_BYTES, BLOCK_BYTES) if plan is None else (plan.whole_bytes, plan.block_bytes)
        if B.xp is not np or row_bytes * oh <= whole:
            return [(0, oh)]
        rows = max(1, block // row_bytes)
        if rows * c * ow * n * itemsize < MIN_COPY_BYTES:  # one offset's copy into a block
            return [(0, oh)]
        return [(i0, min(i0 + rows, oh)) for i0 in range(0, oh, rows)]

    def _im2col(self, padded, i0, i1, ow):
        """``cols`` of output rows ``i0 .. i1 - 1``: rows ``(c, u, v)`` and a last row of ones (it multiplies
        the bias), columns ``(i, j, n)``. Built one kernel offset ``(u, v)`` at a time, a strided slice each."""
        xp = B.xp
        c, _, _, n = padded.shape
        (kh, kw), (sh, sw) = self.layer.kernel_size, self.layer.stride
        cols = xp.empty((c * kh * kw + 1, (i1 - i0) * ow * n), dtype=self.layer.dtype)
        patches = cols[:-1].reshape(c, kh, kw, i1 - i0, ow, n)
        if xp is np:
            # Every window at once: a view whose entry (c, u, v, i, j, n) is padded[c, i*sh + u, j*sw + v, n],
            # copied in one call (one call holds the interpreter lock once, not KH*KW times).
            sc, sy, sx, sn = padded.strides
            windows = np.ndarray(patches.shape, padded.dtype, buffer=padded, offset=sh * i0 * sy,
                                 strides=(sc, sy, sx, sh * sy, sw * sx, sn))  # a view: padded is contiguous
            patches[...] = windows
        else:
            for u in range(kh):
                for v in range(kw):
                    patches[:, u, v] = padded[:, u + sh * i0 : u + sh * i1 : sh, v : v + sw * ow : sw]
        cols[-1] = 1
        return cols
