"""Batch-last memory: images stored as ``(C, H, W, N)`` inside the engine, seen as ``(N, C, H, W)``.

For stride 1, one image row of every image of a batch-last array is one
contiguous run of ``W*N`` numbers, so the engine's im2col copies and col2im
adds move long runs instead of a few pixels at a time; a pooling window's
entries are runs of ``N``. Only memory order changes: the value at
``x[n, c, h, w]`` is the same.
"""

from .. import backend as B


def batch_last(x):
    """``x`` (N, d1, ..., dk) as a C-contiguous (d1, ..., dk, N) array: the batch axis moved to the end.

    No copy when ``x`` already is such an array seen through :func:`batch_first`
    (the output of a convolution kernel, and whatever element-wise kernels made of it).
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
