"""Matrix products and row sums the way the engine computes them: long, thin products in blocks.

A convolution's three products are long and thin -- ``cols`` has ``OH*OW*N``
columns, the other sizes are a few dozen -- and OpenBLAS's AVX-512 kernels
compute small products where they lie in memory, while a large product first
repacks both operands. So on such a BLAS the products are cut into blocks of
:data:`BLOCK_MACS` multiply-adds and handed to BLAS as one stack of small
products. Whether that is done, and the block size, are the running plan's
choices (:mod:`npconv.engine.plan`: measured once per machine and model, then
fixed for the run, since blocks add a long sum in another order); without a
plan, a fixed rule read from NumPy's build (:data:`BLOCKED_PRODUCTS`) and
:data:`BLOCK_MACS`.

The measurements behind the constants are in ``docs/performance.md``.
"""

import functools

import numpy as np

from .. import backend as B
from . import plan as plan_module


def row_sums(a):
    """The sum of each row of a (R, M) matrix, as the product ``a @ ones``.

    The same sums as ``a.sum(axis=1)`` up to rounding; BLAS's matrix-vector
    product computes them several times faster than NumPy's row reduction
    (docs/performance.md).
    """
    xp = B.xp
    if xp is not np:
        return a @ xp.ones(a.shape[1], dtype=a.dtype)
    # np.dot lets other threads run during the product; matmul's matrix-vector path holds the interpreter
    # lock (docs/performance.md, "the interpreter lock"). The same BLAS call, the same bits.
    return np.dot(a, _ones(a.shape[1], a.dtype))


@functools.lru_cache(maxsize=64)
def _ones(length, dtype):
    """A read-only vector of ``length`` ones, made once (filling it anew every call holds the interpreter lock)."""
    ones = np.ones(length, dtype=dtype)
    ones.flags.writeable = False
    return ones


def row_dots(a, b):
    """``(a * b).sum(axis=1)`` for two (R, M) matrices, as R dot products: no (R, M) temporary, and BLAS-fast."""
    xp = B.xp
    if xp is np and a.shape[1] >= LONG_ROW:
        # One BLAS dot per row, each letting other threads run; vecdot calls the same dot for every row
        # but holds the interpreter lock throughout (docs/performance.md, "the interpreter lock").
        out = np.empty(a.shape[0], dtype=np.result_type(a, b))
        for i in range(a.shape[0]):
            out[i] = np.dot(a[i], b[i])
        return out
    if hasattr(xp, "vecdot"):
        return xp.vecdot(a, b)
    return (a * b).sum(axis=1)


#: Columns from which :func:`row_dots` computes row by row: below it the rows are too short for the
#: interpreter lock to matter, and one vecdot call is cheaper than a call per row.
LONG_ROW = 4096


#: Multiply-adds in one block of a long, thin product: small enough for OpenBLAS's small-matrix
#: kernels, large enough to pay for the call (docs/performance.md, "blocked products").
BLOCK_MACS = 1 << 18


#: Whether :func:`matmul_by_blocks` and :func:`matmul_t_by_blocks` cut their products into blocks, when no
#: plan says (:mod:`npconv.engine.plan`): only on OpenBLAS's AVX-512 kernels, where it pays.
BLOCKED_PRODUCTS = plan_module.blas_has_small_matrix_kernels()

#: :func:`matmul_t_by_blocks` sums no blocks of fewer columns than this: there the blocks' partial
#: results cost more than they save, and one product with the operands swapped is fastest
#: (docs/performance.md, "blocked products").
MIN_BLOCK_COLUMNS = 128


def _blocking(rows, inner):
    """Whether products are cut into blocks (the running plan's choice, else :data:`BLOCKED_PRODUCTS`), and the
    columns per block for a product whose other two sizes are ``rows`` and ``inner``."""
    plan = plan_module.current()
    blocked, macs = (BLOCKED_PRODUCTS, BLOCK_MACS) if plan is None else (plan.blocked_products, plan.block_macs)
    return blocked, max(1, macs // (rows * inner))


def matmul_by_blocks(a, b, out=None):
    """``a @ b`` for ``a`` (M, K) and a long ``b`` (K, L), computed block of columns by block of columns.

    Column ``l`` of ``a @ b`` depends on column ``l`` of ``b`` only, so cutting ``b``
    into blocks of columns changes nothing but the size of the products BLAS sees.
    The blocks go to BLAS in one ``matmul`` call, as a stack. Where that does not pay
    (:data:`BLOCKED_PRODUCTS` is False) this is ``a @ b``. With ``out`` (an (M, L)
    array whose rows are contiguous, such as a range of columns of a larger one)
    the product is written there.
    """
    xp = B.xp
    m, k = a.shape
    length = b.shape[1]
    blocked, size = _blocking(m, k)
    if not blocked or xp is not np or length <= size:
        return xp.matmul(a, b, out=out)
    if out is None:
        out = xp.empty((m, length), dtype=xp.result_type(a, b))
    count = length // size
    full = count * size
    # Block i is columns i*size ... (i+1)*size - 1; as views, stacked: (count, K, size) and (count, M, size).
    xp.matmul(a, b[:, :full].reshape(k, count, size).transpose(1, 0, 2),
              out=out[:, :full].reshape(m, count, size).transpose(1, 0, 2))
    if full < length:
        xp.matmul(a, b[:, full:], out=out[:, full:])
    return out


def matmul_t_by_blocks(a, b):
    """``a @ b.T`` for ``a`` (M, L) and ``b`` (R, L) with a long ``L``: a sum of small products.

    ``(a @ b.T)[m, r] = sum_l a[m, l] b[r, l]``; the sum over ``l`` is cut into blocks
    of :data:`BLOCK_MACS` multiply-adds, each block is one small product, and the
    blocks' results are added one after another, in block order. Where that does not
    pay (:data:`BLOCKED_PRODUCTS` is False) this is ``a @ b.T``; where the blocks would be
    shorter than :data:`MIN_BLOCK_COLUMNS`, it is ``(b @ a.T).T``, one product.
    """
    xp = B.xp
    m, length = a.shape
    r = b.shape[0]
    blocked, size = _blocking(m, r)
    if not blocked or xp is not np or length <= size:
        return a @ b.T
    if size < MIN_BLOCK_COLUMNS:  # no blocks: the product with the operands swapped is faster
        return (b @ a.T).T
    count = length // size
    full = count * size
    parts = xp.matmul(a[:, :full].reshape(m, count, size).transpose(1, 0, 2),
                      b[:, :full].reshape(r, count, size).transpose(1, 2, 0))  # (count, M, R)
    total = parts.sum(axis=0)  # along the outer axis NumPy adds the blocks one after another
    if full < length:
        total += a[:, full:] @ b[:, full:].T
    return total
