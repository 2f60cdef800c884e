"""Data parallelism over the batch: :class:`DataParallel` runs a model on every core.

A training step on a batch of N images is, for all the maths, N independent
computations whose parameter gradients are summed at the end. So
``DataParallel(model)`` splits a large enough batch into one chunk per thread:

* every thread runs the whole network on its chunk -- the first chunk on the
  model itself, the others on *replicas* that share the model's weight arrays
  (the same ``Parameter.data``) but keep their own caches and gradients;
* the outputs are concatenated; backward splits ``dy`` the same way, runs each
  chunk's backward in its thread, and adds every replica's gradients into the
  model's, always in chunk order (so runs are repeatable).

NumPy and BLAS release Python's global lock while they compute, so the threads
really run at the same time; BLAS is held to one thread inside each of them so
that two threads do not fight over two cores.

Under ``no_grad()`` (inference) each thread runs its chunk in pieces of at most
``MIN_CHUNK`` samples: nothing is kept for backward, and small pieces keep the
intermediate arrays in the processor's caches.

It is only an execution strategy, applied from outside: the layers know nothing
of threads, and the results equal the one-thread results up to floating-point
rounding (gradients are summed in a different order). With one thread
(``set_num_threads(1)``), a batch smaller than ``2 * MIN_CHUNK``, a network
without Conv2d or MaxPool2d layers (its matrix products already use every core
through BLAS), a Dropout layer in training mode (its masks must come from one
generator in one order), a batch normalization layer in training mode (see
below), or an array backend other than NumPy (a GPU has no use for CPU
threads), the model runs in the calling thread as it is.

**Batch normalization.** In training mode a BatchNorm layer normalizes with the
mean and variance of the *whole* batch, and every output depends on every
input of its channel; each chunk's own statistics would be a different
normalization -- other outputs, other gradients, other running statistics --
not a rounding difference. Sharing the statistics between threads would need
the threads to meet inside the layer (sums of every chunk, then the
normalization), which would make the layers know about threads. So a network
with batch normalization trains in one thread, where BLAS still spreads its
matrix products over the cores; it costs nothing at the default batch of 100,
which runs in one thread anyway. In evaluation mode a BatchNorm layer uses its
running statistics, the same for every sample, so inference is split as usual.
"""

import copy
import itertools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import ThreadpoolController

from .. import backend as B
from .. import nn

#: Smallest chunk worth a thread of its own. Measured on 2 cores with the study's ConvNet:
#: a training batch of 100 ran faster in one thread (BLAS using both cores for the
#: products) than as two chunks of 50, whose many small NumPy calls keep handing
#: Python's global lock back and forth (waking a waiting thread took about 140 us
#: there, a virtual machine); batches of 200 and more, and inference batches of
#: 1000, ran faster split.
MIN_CHUNK = 100

_num_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
_executor = None
_blas = None


def set_num_threads(n):
    """Use ``n`` threads for large batches (1 = everything in the calling thread)."""
    global _num_threads, _executor
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"number of threads must be an integer >= 1, got {n!r}")
    _num_threads = n
    if _executor is not None:
        _executor.shutdown()
        _executor = None


def get_num_threads():
    """The number of threads a large batch is split over (default: the cores this process may use)."""
    return _num_threads


def _pool():
    global _executor, _blas
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=_num_threads - 1, thread_name_prefix="npconv")
        _blas = ThreadpoolController()
    return _executor


def _run_chunks(tasks):
    """Run ``tasks`` (callables), the first in this thread, the rest on the pool; return their results."""
    pool = _pool()
    with _blas.limit(limits=1, user_api="blas"):
        futures = [pool.submit(task) for task in tasks[1:]]
        results = [tasks[0]()]
        results += [f.result() for f in futures]
    return results


def _in_pieces(forward, x):
    """``forward(x)``, computed on pieces of at most ``MIN_CHUNK`` samples and concatenated.

    Only for inference (under ``no_grad()``), where a piece's caches are not needed
    afterwards. A piece's intermediate arrays stay in the processor's caches, which made
    inference on batches of 1000 about 15 % faster here than one pass over each chunk.
    """
    if len(x) <= MIN_CHUNK:
        return forward(x)
    return B.xp.concatenate([forward(x[i : i + MIN_CHUNK]) for i in range(0, len(x), MIN_CHUNK)])


def replicate(layer):
    """A copy of ``layer`` that shares its weight arrays but has its own gradients and caches."""
    if isinstance(layer, nn.Sequential):
        return nn.Sequential(*[replicate(child) for child in layer.layers])
    twin = copy.copy(layer)
    for name, value in vars(layer).items():
        if isinstance(value, nn.Parameter):
            setattr(twin, name, nn.Parameter(value.data))  # same data array, fresh gradient
    twin._saved = None
    return twin


class DataParallel:
    """Run a :class:`~npconv.nn.Sequential` over batch chunks, one per thread, when that pays.

    ``DataParallel(model)(x)`` and ``.backward(dy, input_grad)`` compute what
    ``model(x)`` and ``model.backward(dy, input_grad)`` compute (the same
    numbers up to rounding, the same ``.grad`` of the model's parameters); the
    model itself is unchanged and is still the one to save, train or inspect.
    ``train()``, ``eval()`` and ``training`` are the model's.

    Parameters
    ----------
    model : Sequential
    """

    def __init__(self, model):
        if not isinstance(model, nn.Sequential):
            raise TypeError(f"DataParallel needs a Sequential model, got {type(model).__name__}")
        self.model = model
        self.replicas = []
        self.sizes = None  # chunk sizes of the last forward, None when it ran unsplit

    # --- the model's interface -----------------------------------------------
    @property
    def training(self):
        return self.model.training

    def train(self, mode=True):
        self.model.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):
        if not self.wants(x):
            self.sizes = None
            return self.model(x)
        threads = min(_num_threads, len(x) // MIN_CHUNK)
        chunks = B.xp.array_split(x, threads)
        self.sizes = [len(c) for c in chunks]
        workers = [self.model.forward] + [r.forward for r in self._replicas(threads - 1)]
        if not nn.grad_enabled():  # inference: nothing is kept for backward, so each chunk can go in pieces
            workers = [lambda c, f=f: _in_pieces(f, c) for f in workers]
        outputs = _run_chunks([lambda f=f, c=c: f(c) for f, c in zip(workers, chunks)])
        return B.xp.concatenate(outputs)

    def backward(self, dy, input_grad=True):
        """Backpropagate ``dy`` (see :meth:`npconv.nn.Sequential.backward`)."""
        if self.sizes is None:
            return self.model.backward(dy, input_grad)
        dys = B.xp.split(dy, list(itertools.accumulate(self.sizes[:-1])))
        replicas = self.replicas[: len(self.sizes) - 1]
        for r in replicas:
            r.zero_grad()
        workers = [self.model.backward] + [r.backward for r in replicas]
        dxs = _run_chunks([lambda f=f, d=d: f(d, input_grad) for f, d in zip(workers, dys)])
        for r in replicas:  # chunk order: the same sums on every run
            for mine, theirs in zip(self.model.parameters(), r.parameters()):
                mine.grad += theirs.grad
        return B.xp.concatenate(dxs) if input_grad else None

    # --- when and how to split -------------------------------------------------
    def wants(self, x):
        """Whether to split this batch: NumPy, several threads, a large batch, image layers, no active dropout
        and no batch normalization in training mode (see the module docstring)."""
        layers = self.model.layers
        if B.xp is not np or _num_threads < 2 or len(x) < 2 * MIN_CHUNK:
            return False
        # Only convolution and pooling make the element-wise work that BLAS cannot spread over
        # the cores; a network of Linear layers is a few matrix products, which BLAS's own
        # threads already share out, and splitting it would only add overhead.
        if not any(isinstance(layer, (nn.Conv2d, nn.MaxPool2d)) for layer in layers):
            return False
        if any(isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)) and layer.training for layer in layers):
            return False
        return not any(isinstance(layer, nn.Dropout) and layer.training and layer.p > 0 for layer in layers)

    def _replicas(self, count):
        """``count`` replicas, rebuilt if the model's weight arrays were replaced."""
        params = self.model.parameters()
        fresh = len(self.replicas) == count and all(
            mine.data is theirs.data for r in self.replicas for mine, theirs in zip(r.parameters(), params)
        )
        if not fresh:
            self.replicas = [replicate(self.model) for _ in range(count)]
        for r in self.replicas:
            r.train(self.model.training)
        return self.replicas

