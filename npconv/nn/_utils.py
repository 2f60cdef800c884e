"""Small helpers shared by the layers: a size argument as a pair, a convolution's or pooling's output size."""

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
