"""A stand-in for CuPy on a machine without a GPU: NumPy underneath, CuPy's rules on top.

Installed as ``sys.modules["cupy"]`` by the ``fake_gpu`` fixture, it lets the
CPU test suite run npconv's real GPU code path -- ``backend.use("cupy")`` and
everything that follows -- and check the seam between device and host:

* its arrays are not NumPy arrays: ``np.asarray(device_array)`` raises
  ``TypeError`` as CuPy's does, so any host code that forgets
  ``backend.to_numpy`` fails loudly;
* storing a NumPy array into a device array, or mixing the two in one
  operation, raises too (stricter than CuPy, which copies silently): data must
  be uploaded on purpose, with ``backend.to_device``;
* every implicit transfer to the host -- ``float()``, ``int()``, ``bool()``,
  ``.item()``, ``.get()``, ``asnumpy`` -- is counted in :data:`SYNCS`, the host
  synchronisations a real GPU would wait for.

The numbers are NumPy's own, so results must equal the NumPy backend's bit for
bit. It knows nothing of kernels or streams: it checks where the arrays go, not
how fast they get there.
"""

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

#: Implicit transfers to the host, by kind.
SYNCS = {"float": 0, "int": 0, "bool": 0, "item": 0, "get": 0}
#: Host arrays copied to the device by ``asarray``/``array`` (a dataset should go up once, not every step).
UPLOADS = {"arrays": 0, "bytes": 0}


def reset():
    for counter in (SYNCS, UPLOADS):
        for k in counter:
            counter[k] = 0


def _count_upload(a):
    if isinstance(a, np.ndarray) and a.ndim > 0:
        UPLOADS["arrays"] += 1
        UPLOADS["bytes"] += a.nbytes


def _unwrap(value, strict=True):
    if isinstance(value, ndarray):
        return value._a
    if isinstance(value, np.ndarray) and value.ndim > 0 and strict:
        raise TypeError("a NumPy array met a device array: upload it with backend.to_device first")
    if isinstance(value, tuple):
        return tuple(_unwrap(v, strict) for v in value)
    if isinstance(value, list):
        return [_unwrap(v, strict) for v in value]
    if isinstance(value, dict):
        return {k: _unwrap(v, strict) for k, v in value.items()}
    return value


def _wrap(value):
    if isinstance(value, np.ndarray):
        return ndarray(value)
    if isinstance(value, np.generic):  # CuPy's reductions give 0-d device arrays, not host scalars
        return ndarray(np.asarray(value))
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


class ndarray(NDArrayOperatorsMixin):  # noqa: N801 - CuPy's name
    """A device array: a NumPy array that refuses to leave the device implicitly."""

    __slots__ = ("_a",)

    def __init__(self, a):
        object.__setattr__(self, "_a", a)

    # CuPy refuses np.asarray(cupy_array): transfers are explicit.
    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a "
                        "NumPy array explicitly.")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        result = getattr(ufunc, method)(*_unwrap(inputs), **_unwrap(kwargs))
        return _wrap(result)

    def __array_function__(self, func, types, args, kwargs):
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)))

    def __getattr__(self, name):
        attr = getattr(self._a, name)
        if callable(attr):
            return lambda *a, **k: _wrap(attr(*_unwrap(a), **_unwrap(k)))
        return _wrap(attr)

    def __setattr__(self, name, value):
        raise AttributeError(f"cannot set {name} of a device array")

    def __getitem__(self, key):
        return _wrap(self._a[_unwrap(key, strict=False)])

    def __setitem__(self, key, value):
        if isinstance(value, np.ndarray) and value.ndim > 0:
            raise TypeError("storing a NumPy array into a device array: upload it with backend.to_device first")
        self._a[_unwrap(key, strict=False)] = _unwrap(value)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (ndarray(row) if isinstance(row, np.ndarray) else row for row in self._a)

    def __repr__(self):
        return f"fakecupy.ndarray({self._a!r})"

    # Implicit transfers to the host: allowed (as in CuPy), and counted.
    def __float__(self):
        SYNCS["float"] += 1
        return float(self._a)

    def __int__(self):
        SYNCS["int"] += 1
        return int(self._a)

    def __index__(self):
        SYNCS["int"] += 1
        return self._a.__index__()

    def __bool__(self):
        SYNCS["bool"] += 1
        return bool(self._a)

    def __format__(self, spec):
        SYNCS["float"] += 1
        return format(self._a.item() if self._a.ndim == 0 else self._a, spec)

    def item(self):
        SYNCS["item"] += 1
        return self._a.item()

    def tolist(self):
        SYNCS["item"] += 1
        return self._a.tolist()

    def get(self):
        SYNCS["get"] += 1
        return self._a.copy()


def asnumpy(a):
    """A host copy (CuPy's ``cupy.asnumpy``)."""
    if isinstance(a, ndarray):
        return a.get()
    return np.asarray(a)


def asarray(a, dtype=None, order=None):
    """An upload (or a view of a device array)."""
    _count_upload(a)
    return ndarray(np.asarray(_unwrap(a, strict=False), dtype=dtype, order=order))


def array(a, dtype=None, copy=True, order="K"):
    _count_upload(a)
    return ndarray(np.array(_unwrap(a, strict=False), dtype=dtype, copy=copy, order=order))


def __getattr__(name):
    """Every other function is NumPy's, on device arrays in and out."""
    attr = getattr(np, name)
    if callable(attr) and not isinstance(attr, type):
        return lambda *a, **k: _wrap(attr(*_unwrap(a), **_unwrap(k)))
    return attr


class _Runtime:
    @staticmethod
    def getDeviceCount():  # noqa: N802 - CuPy's name
        return 1


class cuda:  # noqa: N801 - CuPy's namespace
    runtime = _Runtime
