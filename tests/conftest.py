"""Shared fixtures: a seeded random Generator, torch (skip, or fail in CI: ``dependencies.py``), one BLAS thread.

The naive loop-based conv/pool/batch-norm reference is part of the package, where
learners find it: ``npconv/nn/reference.py`` (``from npconv.nn import reference``).
"""

import os
import sys

# One BLAS thread for the whole test session, set before NumPy loads OpenBLAS.
# Why: on a small, shared machine OpenBLAS's worker threads spin against each
# other (docs/performance.md); one thread is also what makes float sums
# bit-for-bit repeatable from run to run.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

# Plans the engine measures (npconv/engine/plan.py) go to a folder of this session, never the user's cache;
# subprocesses inherit it, so the runs of one test share their plans.
import tempfile  # noqa: E402

os.environ.setdefault("NPCONV_PLAN_CACHE", tempfile.mkdtemp(prefix="npconv-plans-"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from dependencies import require  # noqa: E402

try:  # NumPy may already have been imported (by a plugin) with more threads.
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - threadpoolctl is optional
    threadpool_limits = None

if threadpool_limits is not None:
    _BLAS_LIMIT = threadpool_limits(limits=1, user_api="blas")

SEED = 20240611


@pytest.fixture(scope="session", autouse=True)
def _datasets_read_once():
    """The suite trains hundreds of runs in this process on the same MNIST: read it once
    (``npconv.data.datasets.keep_loaded``, as a sweep's worker does)."""
    from npconv.data.datasets import keep_loaded

    with keep_loaded():
        yield


@pytest.fixture
def rng():
    """A fresh ``numpy.random.Generator`` with a fixed seed: every test is deterministic."""
    return np.random.default_rng(SEED)


@pytest.fixture(scope="session")
def torch():
    """The ``torch`` module (one CPU thread); without torch the test skips, or fails under ``CI=true``."""
    torch = require("torch")
    torch.set_num_threads(1)
    return torch


def randomize_output_layer(model, rng):
    """Give the model's output layer random weights (the study's models start it at zero).

    With a zero output layer no gradient reaches the layers below on the first
    backward pass, which would make gradient checks of a whole model vacuous.
    """
    last = model[len(model) - 1]
    from npconv import backend

    last.weight.data[...] = backend.to_device(0.1 * rng.standard_normal(last.weight.data.shape))
    return model


LAYOUTS = ("nchw", "batch-last", "strided")


def in_layout(a, layout):
    """The same values as ``a`` (N, ...) stored another way in memory.

    ``"nchw"``: C-contiguous; ``"batch-last"``: the batch axis is the fastest-moving
    one, as Conv2d outputs are stored; ``"strided"``: a view into a larger array,
    contiguous nowhere.
    """
    if layout == "nchw":
        return np.ascontiguousarray(a)
    if layout == "batch-last":
        return np.moveaxis(np.ascontiguousarray(np.moveaxis(a, 0, -1)), -1, 0)
    if layout == "strided":
        big = np.zeros(tuple(2 * s + 1 for s in a.shape), dtype=a.dtype)
        view = big[tuple(slice(1, None, 2) for _ in a.shape)]
        view[...] = a
        return view
    raise ValueError(layout)


@pytest.fixture
def fake_gpu(monkeypatch):
    """npconv on the GPU backend, with :mod:`fakecupy` standing in for CuPy (see its docstring)."""
    import fakecupy

    from npconv import backend

    monkeypatch.setitem(sys.modules, "cupy", fakecupy)
    backend.use("cupy")
    fakecupy.reset()
    try:
        yield fakecupy
    finally:
        backend.use("numpy")


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def write_architecture_file(path, layers):
    """Write ``layers`` (dicts: ``type`` and options) to ``path`` as a TOML architecture file, as a user writes one.

    Returns the path as a string (what ``--model`` takes).
    """
    lines = []
    for layer in layers:
        lines += ["[[layer]]", *(f"{key} = {_toml_value(value)}" for key, value in layer.items()), ""]
    path.write_text("\n".join(lines))
    return str(path)


def small_bn_net(channels=4, hidden=None):
    """A small ConvNet with batch normalization as architecture-file layers: conv 3x3 - BN - ReLU - max-pool - flatten,
    then (with ``hidden``) Linear - BN1d - ReLU, and a Linear to 10 classes."""
    layers = [{"type": "conv2d", "out_channels": channels, "kernel_size": 3, "padding": 1}, {"type": "batchnorm2d"},
              {"type": "relu"}, {"type": "maxpool2d", "kernel_size": 2}, {"type": "flatten"}]
    if hidden:
        layers += [{"type": "linear", "out_features": hidden}, {"type": "batchnorm1d"}, {"type": "relu"}]
    return layers + [{"type": "linear", "out_features": 10}]


@pytest.fixture(scope="session")
def small_mnist(tmp_path_factory):
    """Real MNIST, cut small: 600 training and 500 test images as IDX files (a --data-dir)."""
    from npconv import data

    mnist = data.load_dataset("mnist")
    folder = tmp_path_factory.mktemp("mnist-small")
    files = data.DATASETS["mnist"].files
    for part, n in (("train", 600), ("test", 500)):
        data.write_idx(folder / files[f"{part}_images"], getattr(mnist, f"{part}_images")[:n])
        data.write_idx(folder / files[f"{part}_labels"], getattr(mnist, f"{part}_labels")[:n].astype(np.uint8))
    return str(folder)
