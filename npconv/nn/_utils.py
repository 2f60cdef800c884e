"""Small helpers shared by the layers: batch-last memory, output sizes, products in blocks, row sums."""

import os

import numpy as np

from .. import backend as B
from ..errors import is_int


def pair(value, name):
    """``3 -> (3, 3)``; ``(3, 2) -> (3, 2)``; anything else is a clear error."""
    if is_int(value):
        value = (value, value)
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(is_int(v) for v in value):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return (int(value[0]), int(value[1]))


def output_size(size, kernel, stride, padding, what):
    """One spatial output size: ``(size + 2*padding - kernel) // stride + 1``.

    A window that does not fit at least once is an error rather than an empty output.
    """
    padded = size + 2 * padding
    if padded < kernel:
        raise ValueError(f"{what}: input size {size} (padded {padded}) is smaller than the kernel size {kernel}")
    return (padded - kernel) // stride + 1


def batch_last(x):
    """``x`` (N, d1, ..., dk) as a C-contiguous (d1, ..., dk, N) array: the batch axis moved to the end.

    No copy when ``x`` already is such an array seen through :func:`batch_first`
    (the output of a Conv2d, and whatever element-wise layers made of it).
    """
    return B.xp.ascontiguousarray(x.transpose(*range(1, x.ndim), 0))


def batch_first(a):
    """The (N, d1, ..., dk) view of a batch-last array ``a`` (d1, ..., dk, N); no copy."""
    return a.transpose(a.ndim - 1, *range(a.ndim - 1))


def is_batch_last(x):
    """Whether ``x`` (N, ...) is stored batch-last: a :func:`batch_first` view of a C-contiguous array."""
    return x.ndim >= 2 and x.transpose(*range(1, x.ndim), 0).flags.c_contiguous


def reshape_batch(x, shape):
    """``x.reshape(N, *shape)``, without a copy when ``x`` is batch-last (the result is batch-last too)."""
    if is_batch_last(x):
        return batch_first(batch_last(x).reshape(*shape, x.shape[0]))
    return x.reshape(x.shape[0], *shape)



def row_sums(a):
    """The sum of each row of a (R, M) matrix, as the product ``a @ ones``.

    The same sums as ``a.sum(axis=1)`` up to rounding; BLAS's matrix-vector
    product computes them several times faster than NumPy's row reduction (a
    (16, 78400) float32 matrix, one core of an AMD Zen 4: 0.04 ms against 0.23 ms).
    """
    return a @ B.xp.ones(a.shape[1], dtype=a.dtype)


def row_dots(a, b):
    """``(a * b).sum(axis=1)`` for two (R, M) matrices, as R dot products: no (R, M) temporary, and BLAS-fast."""
    xp = B.xp
    if hasattr(xp, "vecdot"):
        return xp.vecdot(a, b)
    return (a * b).sum(axis=1)


#: Multiply-adds in one block of a long, thin matrix product (see :func:`matmul_by_blocks`).
#: Measured on the study's ConvNet (float32, batch 100, one core of an AMD Zen 4, OpenBLAS 0.3.31
#: with its AVX-512 kernels), whole training steps, blocks against one product per layer:
#: 2**16: 1.13x the time, 2**17: 0.95x, 2**18: 0.88x, 2**19: 0.87x, 2**20: 1.04x. Above about
#: 100**3 multiply-adds OpenBLAS no longer uses its small-matrix kernels.
BLOCK_MACS = 1 << 18


def _blas_has_small_matrix_kernels():
    """Whether NumPy's BLAS is OpenBLAS on a CPU with AVX-512, where it runs its small-matrix kernels.

    Those kernels multiply small matrices where they lie in memory; a large
    product first repacks both operands, which for the long, thin products of
    a convolution costs more than the arithmetic. With OpenBLAS's AVX2 kernels
    (no small-matrix path) blocks cost 6-9 % more than one product, so they are
    used only here. A fixed rule, not a timing: it must not change from run to
    run, because blocks add up a long sum in another order (see
    :func:`matmul_t_by_blocks`) and so change the last bits of the results.
    """
    try:
        config = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]["name"].lower()
        simd = config["SIMD Extensions"]["found"]
    except (AttributeError, KeyError, TypeError, ValueError):  # another NumPy build or version
        return False
    forced = os.environ.get("OPENBLAS_CORETYPE", "").lower()  # OpenBLAS told to use other kernels
    if forced and forced not in ("skylakex", "cooperlake", "sapphirerapids"):
        return False
    return "openblas" in blas and any(name in simd for name in ("X86_V4", "AVX512_SKX"))


#: Whether :func:`matmul_by_blocks` and :func:`matmul_t_by_blocks` cut their products into blocks.
BLOCKED_PRODUCTS = _blas_has_small_matrix_kernels()

#: :func:`matmul_t_by_blocks` sums no blocks of fewer columns than this: where the other two sizes
#: are large, the blocks' partial results cost more than the blocks save, and one product with the
#: operands swapped is fastest. Measured on one core of an AMD Zen 4 (OpenBLAS 0.3.31, AVX-512
#: kernels), float32, the weight gradients of chunks of 50 images: ``cnn-bn``'s second convolution
#: (32 x 145, 9,800 columns) 1.84 ms in blocks of 56 columns, 1.60-1.64 ms in blocks of 224 to 4,900,
#: 1.15-1.20 ms as ``(cols @ dy.T).T``; ``lenet5``'s second (16 x 151, 5,000 columns) 0.63 ms in blocks
#: of 108, 0.34 ms swapped. The study's ConvNet's blocks have 224 columns or more and stay.
MIN_BLOCK_COLUMNS = 128


def _block_length(rows, inner):
    """Columns per block for a product whose other two sizes are ``rows`` and ``inner``."""
    return max(1, BLOCK_MACS // (rows * inner))


def matmul_by_blocks(a, b, out=None):
    """``a @ b`` for ``a`` (M, K) and a long ``b`` (K, L), computed block of columns by block of columns.

    Column ``l`` of ``a @ b`` depends on column ``l`` of ``b`` only, so cutting ``b``
    into blocks of columns changes nothing but the size of the products BLAS sees:
    small ones of :data:`BLOCK_MACS` multiply-adds, which OpenBLAS's AVX-512 kernels
    compute faster than one long product. The blocks go to BLAS in one ``matmul``
    call, as a stack of blocks. Where that does not pay
    (:data:`BLOCKED_PRODUCTS` is False) this is ``a @ b``. With ``out`` (an (M, L)
    array whose rows are contiguous, such as a range of columns of a larger one)
    the product is written there.
    """
    xp = B.xp
    m, k = a.shape
    length = b.shape[1]
    size = _block_length(m, k)
    if not BLOCKED_PRODUCTS or xp is not np or length <= size:
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
    size = _block_length(m, r)
    if not BLOCKED_PRODUCTS or xp is not np or length <= size:
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
