"""The array backend: the one seam between npconv's math and the array library.

Every layer, loss and optimizer does its array math through ``xp`` from this
module instead of importing NumPy directly, so that another array library with
NumPy's API (CuPy, for a GPU) can later be dropped in here without touching the
layers. Data loading, file I/O and plotting are host-side and use NumPy.

Today the backend is NumPy, float32 by default.
"""

import numpy as np

#: The array module used by every layer (``numpy`` today).
xp = np

#: The default floating-point type of parameters and activations.
DEFAULT_DTYPE = np.float32


def to_numpy(a):
    """Return ``a`` as a NumPy array on the host (a no-op for the NumPy backend)."""
    return np.asarray(a)


def resolve_dtype(dtype):
    """Check that ``dtype`` is float32 or float64 and return it as a NumPy dtype."""
    dt = np.dtype(DEFAULT_DTYPE if dtype is None else dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return dt
