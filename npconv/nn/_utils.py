"""Small helpers shared by the convolution and pooling layers."""

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
