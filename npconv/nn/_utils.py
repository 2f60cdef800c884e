"""Small helpers shared by the convolution and pooling layers."""


import numbers


def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def pair(value, name):
    """``3 -> (3, 3)``; ``(3, 2) -> (3, 2)``; anything else is a clear error."""
    if _is_int(value):
        value = (value, value)
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(_is_int(v) for v in value):
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
