"""The array backend: the one seam between npconv's math and the array library.

Every layer, loss and optimizer does its array math through ``xp`` from this
module instead of importing NumPy directly, so that another array library with
NumPy's API -- CuPy, for an NVIDIA GPU -- runs the same hand-written layers:

>>> from npconv import backend
>>> backend.use("cupy")      # or backend.use_device("cuda"); backend.use("numpy") goes back

Arrays then live on the device: parameters are created there, data is uploaded
once (:func:`to_device`), and only :func:`to_numpy` brings results back to the
host (for files, printing, plotting). Data loading, file I/O and plotting are
host-side and use NumPy. Files are always host NumPy arrays, so a model trained
on one device loads on the other.

The default backend is NumPy, float32.
"""

import contextlib
import importlib

import numpy as np

from .errors import SettingError

#: The array module used by every layer (``numpy``, or ``cupy`` after :func:`use`).
xp = np

#: The default floating-point type of parameters and activations.
DEFAULT_DTYPE = np.float32

#: Devices by name, as the ``device`` training setting and ``--device`` name them, and their array module.
DEVICES = {"cpu": "numpy", "cuda": "cupy"}

#: What to install for the GPU backend (CuPy's wheel is built for one CUDA major version).
CUDA_EXTRA = 'an optional extra: pip install "npconv[cuda]" for CUDA 13, or "npconv[cuda12]" for CUDA 12'


def use(name):
    """Make ``name`` (``"numpy"`` or ``"cupy"``) the array module of every layer; returns the module.

    Raises :class:`~npconv.errors.SettingError` (naming the ``device``) when
    CuPy is not installed or sees no CUDA device. Build models *after* the
    switch: parameters are created on the backend current at construction.
    """
    global xp
    if name == "numpy":
        xp = np
        return xp
    if name != "cupy":
        raise ValueError(f"unknown array backend {name!r}; choose numpy or cupy")
    xp = _cupy()
    return xp


def use_device(device):
    """Switch to the backend of ``device`` (``"cpu"`` or ``"cuda"``, see :data:`DEVICES`)."""
    if device not in DEVICES:
        raise SettingError("device", f"must be one of {', '.join(DEVICES)}, got {device!r}")
    return use(DEVICES[device])


@contextlib.contextmanager
def on_device(device):
    """Within the block, the backend of ``device``; afterwards the one before it."""
    previous = current_device()
    use_device(device)
    try:
        yield xp
    finally:
        use_device(previous)


def current_device():
    """``"cpu"`` or ``"cuda"``: where arrays of the current backend live."""
    return "cpu" if xp is np else "cuda"


def _cupy():
    """The ``cupy`` module, checked to see a CUDA device; a clear :class:`SettingError` otherwise."""
    try:
        cupy = importlib.import_module("cupy")
    except ImportError:
        raise SettingError("device", f"cuda needs CuPy, {CUDA_EXTRA}") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # noqa: BLE001 - CuPy raises its CUDA runtime errors when no driver or GPU is there
        raise SettingError("device", f"cuda: CuPy is installed but finds no CUDA device ({' '.join(str(e).split())})"
                           ) from None
    if count < 1:
        raise SettingError("device", "cuda: CuPy is installed but finds no CUDA device")
    return cupy


def to_numpy(a):
    """``a`` as a NumPy array on the host (a no-op for NumPy arrays; a copy from the device otherwise)."""
    if isinstance(a, np.ndarray) or np.isscalar(a):
        return np.asarray(a)
    return xp.asnumpy(a)


def to_device(a, dtype=None):
    """``a`` (host data) as an array of the current backend, optionally of ``dtype`` (a no-op on the CPU)."""
    return xp.asarray(a, dtype=dtype)


def scalar(a):
    """A 0-d result (a loss) as the caller may keep it: a float on the CPU; on a device, a 0-d float64 array.

    Reading a device value is a host synchronisation (the GPU must finish first);
    keeping it as an array lets the training loop add it up on the device and
    read it once, as ``loss.item()`` in PyTorch is left to the caller.
    """
    return float(a) if xp is np else a.astype(xp.float64)


def on_host():
    """Whether arrays live on the host (the NumPy backend)."""
    return xp is np


def resolve_dtype(dtype):
    """Check that ``dtype`` is float32 or float64 and return it as a NumPy dtype."""
    dt = np.dtype(DEFAULT_DTYPE if dtype is None else dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return dt
