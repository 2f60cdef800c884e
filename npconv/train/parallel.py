"""Data parallelism over the batch: :class:`DataParallel` computes a batch in fixed chunks, on one or more threads.

A training step on a batch of N images is, for all the maths, N independent
computations whose parameter gradients are summed at the end. So
``DataParallel(model)`` cuts a batch into chunks of at most :data:`CHUNK`
images -- always the same chunks for the same batch size, on any machine, under
any load, with any number of threads -- and

* runs the whole network on each chunk: the first chunk on the model itself,
  the others on *replicas* that share the model's weight arrays (the same
  ``Parameter.data``) but keep their own caches and gradients;
* concatenates the outputs; backward splits ``dy`` the same way, runs each
  chunk's backward, and adds every replica's gradients into the model's,
  always in chunk order.

Under ``no_grad()`` (inference) nothing is kept for backward, and the chunks are
pieces of :data:`PIECE` images, small enough to stay in the processor's caches.

**Where** the chunks run -- one after another in the calling thread, or spread
over several threads -- changes no number: each chunk is computed the same way
wherever it runs and the sums are always taken in chunk order. So the numbers
of a run depend on its settings (and on the CPU's BLAS kernels), never on the
threads or the load, and the thread count can change at any step. A
:class:`~npconv.train.tuning.ThreadTuner` chooses it by timing the run's own
steps, and takes more threads than there are free cores (measured) only when
they are clearly faster.

BLAS runs on **one thread** inside the chunks: OpenBLAS's result depends on its
own thread count for some products (threaded, it cuts a long sum differently:
measured for the 784-term sums of the cnn's first Linear layer), and where
another program keeps a core busy, OpenBLAS's waiting threads slowed a cnn step 4x.

NumPy and BLAS release Python's global lock while they compute, so threads
really run at the same time. It is only an execution strategy, applied from
outside: the layers know nothing of threads. The chunked result equals the
model's own on the whole batch up to floating-point rounding (sums are split
per chunk).

**What is cut.** A network is cut into chunks when every layer treats each
sample on its own -- or is a batch normalization, see below -- and one of them
is a convolution or a pooling layer (:func:`_can_cut`). It is **not** cut (the
model runs on the batch as it is) when it has a layer that mixes samples in
another way, when it is only a few Linear layers -- matrix products, cheaper on
the whole batch -- or with an array backend other than NumPy (a GPU has no use
for CPU threads). Such a batch runs with NumPy's BLAS as configured -- on every
core by default, where its own threads share out the matrix products (the
study's mlp, quiet 2-core Zen 4: 0.33 s an epoch with OpenBLAS on 2 threads,
0.44 s on one, 0.56 s in chunks on two Python threads). Its numbers then depend
on BLAS's thread count, which is the same on every run on one machine
(``OPENBLAS_NUM_THREADS`` sets it; 1 suits a busy machine, where OpenBLAS's
spinning threads wait for each other). With a Dropout layer active, the chunks
run one after another, never on threads: the masks come from one generator and
must be drawn in chunk order.

**Batch normalization.** In training mode a BatchNorm layer normalizes with the
mean and variance of the *whole* batch, and every output depends on every
input of its channel; each chunk's own statistics would be a different
normalization -- other outputs, other gradients, other running statistics --
not a rounding difference. So the chunks meet at every such layer, as
PyTorch's SyncBatchNorm has the devices of a data-parallel run meet: the
network is cut into segments (:func:`_segments`) that end at the batch norms;
every chunk runs a segment and takes the :class:`~npconv.nn.batchnorm.Moments`
of its values (:meth:`~npconv.nn.BatchNorm2d.moments`); the calling thread pools
them, in chunk order, into the whole batch's mean and variance
(:func:`~npconv.nn.batchnorm.pooled`) and moves the running statistics once;
then every chunk normalizes with them and runs the next segment. Backward meets
the same way: every chunk's ``dbeta`` and ``dgamma``
(:meth:`~npconv.nn.BatchNorm2d.gradient_sums`) are added up before any chunk
computes its ``dx`` (:meth:`~npconv.nn.BatchNorm2d.input_gradient`). The layers
know nothing of threads: they offer their math in those steps, and this module
runs the steps. ``cnn-bn``, quiet 2-core Zen 4, a training step: 14 ms in
chunks on 2 threads, 22 ms on one; it took 17-18 ms on 2 threads when the batch
norms ran on the whole batch between chunked stretches (joining and cutting the
batch around each, and normalizing on one core); 13.3-13.9 ms once its second
convolution ran in blocks of output rows (:mod:`npconv.nn.conv`). In evaluation mode a
BatchNorm layer uses its running statistics, the same for every sample, and
the network is one segment.
"""

import contextlib
import copy
import functools
import itertools
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from threadpoolctl import ThreadpoolController

from .. import backend as B
from .. import nn
from ..nn._utils import batch_first, batch_last, is_batch_last
from ..nn.batchnorm import pooled
from .tuning import CoreMeter, ThreadTuner, usable_cores

#: Images per chunk of a training batch. Measured on 2 cores (AMD Zen 4, one BLAS thread,
#: the study's ConvNet, batch 100, paired and interleaved runs): two chunks of 50 one after
#: another took about 2 % more CPU time than the whole batch at once (the extra calls, partly
#: paid back by a smaller chunk's arrays staying in the caches). So cutting costs little where
#: only one core is free, and lets two threads share a batch of 100 where two are.
CHUNK = 50

#: Images per piece of an inference batch (under ``no_grad()``): 10,000 test images in
#: batches of 1000 took 15 % less time in pieces of 100 than in chunks of 500.
PIECE = 100

#: Layers that compute each sample on its own, so a batch can be cut into chunks
#: (Dropout too: its masks are independent per element).
PER_SAMPLE = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.Linear, nn.Flatten, nn.ReLU, nn.Sigmoid, nn.Tanh,
              nn.Dropout)


def _batch_statistics(layer):
    """Whether ``layer`` uses the statistics of the whole batch: a batch normalization in training mode.
    (In evaluation mode it uses its running statistics, the same for every sample.)"""
    return isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)) and layer.training


_max_threads = usable_cores()
_executor = None
_blas = None


def set_num_threads(n):
    """Use at most ``n`` threads (1 = everything in the calling thread)."""
    global _max_threads, _executor
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"number of threads must be an integer >= 1, got {n!r}")
    _max_threads = n
    if _executor is not None:
        _executor.shutdown()
        _executor = None


def get_num_threads():
    """The most threads a batch is spread over (default: the cores this process may use)."""
    return _max_threads


def _pool():
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=max(1, _max_threads - 1), thread_name_prefix="npconv")
    return _executor


@contextlib.contextmanager
def one_blas_thread():
    """A context in which NumPy's BLAS uses one thread; costs a few microseconds.

    threadpoolctl finds the BLAS libraries once; entering and leaving then only
    set their thread counts (``threadpool_limits`` would look them all up again).
    """
    global _blas
    if _blas is None:
        _blas = [lib for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas"]
    before = [lib.get_num_threads() for lib in _blas]
    for lib, n in zip(_blas, before):
        if n != 1:
            lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, n in zip(_blas, before):
            if n != 1:
                lib.set_num_threads(n)


def _run(tasks, threads):
    """Run ``tasks`` (callables) on ``threads`` threads, the calling one included; return their results in order.

    Thread ``t`` runs tasks ``t, t + threads, t + 2*threads, ...`` one after another.
    """
    if threads <= 1:
        return [task() for task in tasks]
    share = [tasks[t::threads] for t in range(threads)]
    futures = [_pool().submit(lambda mine=mine: [task() for task in mine]) for mine in share[1:]]
    results = [[task() for task in share[0]]] + [f.result() for f in futures]
    ordered = [None] * len(tasks)
    for t, done in enumerate(results):
        ordered[t::threads] = done
    return ordered


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


def _layers(model):
    """Every layer of ``model``, nested Sequentials opened."""
    for layer in model.layers:
        if isinstance(layer, nn.Sequential):
            yield from _layers(layer)
        else:
            yield layer


#: Layers that make a network worth cutting into chunks: without one, it is a few matrix
#: products, cheaper on the whole batch (the study's mlp: +30 % CPU time per step in chunks).
WORTH_CUTTING = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


def _can_cut(layers):
    """Whether a network of ``layers`` may be cut into chunks and is worth it: every layer is
    per-sample (:data:`PER_SAMPLE`) or a batch normalization (in training mode its statistics are
    pooled over the chunks), and one of them is a convolution or a pooling layer (:data:`WORTH_CUTTING`)."""
    return (all(isinstance(layer, (*PER_SAMPLE, nn.BatchNorm1d, nn.BatchNorm2d)) for layer in layers)
            and any(isinstance(layer, WORTH_CUTTING) for layer in layers))


@dataclass
class _Segment:
    """The layers between two batch normalizations (training mode), for every chunk.

    Chunk ``i`` runs ``layers[i]`` (a Sequential of chunk i's model or replica),
    after normalizing with ``before[i]`` (the batch normalization that ends the
    previous segment) and before taking the moments of ``after[i]`` (the one that
    ends this segment); None at the network's two ends. A segment without a
    convolution or a pooling layer (:data:`WORTH_CUTTING`: ``cnn-bn``'s head, a
    BatchNorm1d, a ReLU and a Linear(128, 10) on 50 images) is too small to hand
    to another thread: its chunks run one after another in the calling thread
    (``threaded`` False; quiet 2-core Zen 4: 0.20 ms forward on 2 threads, 0.08 ms in one).
    """

    layers: list
    before: list | None
    after: list | None

    @property
    def threaded(self):
        return any(isinstance(layer, WORTH_CUTTING) for layer in self.layers[0])


def _segments(workers):
    """The network of ``workers`` (the model and its replicas, one per chunk) cut at its batch normalizations."""
    layers = [list(_layers(worker)) for worker in workers]
    bounds = [i for i, layer in enumerate(layers[0]) if _batch_statistics(layer)]
    segments, start = [], 0
    for stop in bounds + [len(layers[0])]:
        segments.append(_Segment([nn.Sequential(*mine[start:stop]) for mine in layers],
                                 [mine[start - 1] for mine in layers] if start else None,
                                 [mine[stop] for mine in layers] if stop < len(layers[0]) else None))
        start = stop + 1
    return segments


def _split(a, sizes):
    """``a`` cut along the batch axis into pieces of ``sizes`` images (views)."""
    return B.xp.split(a, list(itertools.accumulate(sizes[:-1])))


def _join(pieces):
    """The ``pieces`` joined along the batch axis, in order.

    Batch-last pieces (a Conv2d's outputs and what element-wise layers make of
    them, see :mod:`npconv.nn.conv`) are joined batch-last, so that the layer
    that takes the whole batch (a BatchNorm2d) reads it without another copy.
    """
    if all(is_batch_last(p) for p in pieces):
        return batch_first(B.xp.concatenate([batch_last(p) for p in pieces], axis=-1))
    return B.xp.concatenate(pieces)


class DataParallel:
    """Run a :class:`~npconv.nn.Sequential` over fixed chunks of the batch, on as many threads as pay.

    ``DataParallel(model)(x)`` and ``.backward(dy, input_grad)`` compute what
    ``model(x)`` and ``model.backward(dy, input_grad)`` compute (the same
    numbers up to rounding, the same ``.grad`` of the model's parameters); the
    model itself is unchanged and is still the one to save, train or inspect.
    ``train()``, ``eval()`` and ``training`` are the model's.

    Parameters
    ----------
    model : Sequential

    Attributes
    ----------
    sizes : list of int or None
        The chunk sizes of the last forward; None when the batch was not cut.
    threads : int
        The threads the last forward used.
    tuners : dict
        ``(grad enabled, number of chunks) ->`` the :class:`~npconv.train.tuning.ThreadTuner`
        of such batches: training steps and inference batches are timed apart.
    """

    def __init__(self, model):
        if not isinstance(model, nn.Sequential):
            raise TypeError(f"DataParallel needs a Sequential model, got {type(model).__name__}")
        self.model = model
        self.replicas = []
        self._params = []          # the model's parameters and each replica's, refreshed by _replicas
        self._replica_params = []
        self.sizes = None
        self.threads = 1
        self.tuners = {}  # (grad enabled, number of chunks) -> ThreadTuner
        self._meter = CoreMeter()
        self._timing = None  # (tuner, seconds of the forward) until the step's backward ends

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
        started = time.perf_counter()
        self._timing = None
        chunks = self.chunks(x)
        if chunks is None:  # the model as it is, with BLAS as configured (see the module docstring)
            self.sizes, self.threads = None, 1
            return self.model(x)
        self.sizes = [len(c) for c in chunks]
        grad = nn.grad_enabled()
        tuner = self._tuner(grad, len(chunks))
        self.threads = min(tuner.threads(), _max_threads) if tuner else 1
        self._segments = _segments(self._workers(len(chunks), grad))
        self._counts = []  # per batch normalization: the values per channel of the whole batch
        with one_blas_thread():
            outs, statistics = chunks, None
            for segment in self._segments:
                def forward(i, piece, segment=segment, statistics=statistics):
                    h = piece if segment.before is None else segment.before[i].normalize(*statistics)
                    h = segment.layers[i].forward(h)
                    return h if segment.after is None else segment.after[i].moments(h)
                outs = _run([functools.partial(forward, i, piece) for i, piece in enumerate(outs)],
                            self.threads if segment.threaded else 1)
                if segment.after is not None:  # the whole batch's statistics, from every chunk's moments
                    statistics = pooled(outs)
                    self._counts.append(sum(moments.count for moments in outs))
                    segment.after[0].track(*statistics, self._counts[-1])  # the model's own layer
            out = _join(outs)
        if tuner is not None:
            seconds = time.perf_counter() - started
            if grad:
                self._timing = (tuner, seconds)  # the step ends with its backward
            else:
                tuner.record(seconds)
        return out

    def backward(self, dy, input_grad=True):
        """Backpropagate ``dy`` (see :meth:`npconv.nn.Sequential.backward`)."""
        if self.sizes is None:
            return self.model.backward(dy, input_grad)
        started = time.perf_counter()
        count = len(self.sizes) - 1
        replica_params = self._replica_params[:count]
        for params in replica_params:
            for p in params:
                p.grad.fill(0)
        with one_blas_thread():
            dys, sums = _split(dy, self.sizes), None
            for k in reversed(range(len(self._segments))):
                segment = self._segments[k]
                needed = input_grad or k > 0  # the gradient of a segment's input (the network's: if asked for)
                def backward(i, d, segment=segment, sums=sums, needed=needed, k=k):
                    if segment.after is not None:
                        d = segment.after[i].input_gradient(d, sums, self._counts[k])
                    d = segment.layers[i].backward(d, needed)
                    return d if segment.before is None else (d, segment.before[i].gradient_sums(d))
                dys = _run([functools.partial(backward, i, d) for i, d in enumerate(dys)],
                           self.threads if segment.threaded else 1)
                if segment.before is not None:  # the whole batch's dbeta and dgamma, summed in chunk order
                    sums = tuple(sum(parts) for parts in zip(*(s for _, s in dys)))
                    dys = [d for d, _ in dys]
            dy = _join(dys) if input_grad else None
        for params in replica_params:  # chunk order: the same sums on every run, with any number of threads
            for mine, theirs in zip(self._params, params):
                mine.grad += theirs.grad
        if self._timing is not None:
            tuner, forward_seconds = self._timing
            tuner.record(forward_seconds + time.perf_counter() - started)
            self._timing = None
        return dy

    # --- how to cut and where to run -------------------------------------------
    def chunks(self, x):
        """The chunks ``x`` is computed in (a list of views), or None when it is not cut.

        :data:`CHUNK` images per chunk for a training batch, :data:`PIECE` under
        ``no_grad()``; sizes as equal as possible (``numpy.array_split``). Not cut
        when the network cannot be cut or is not worth it (see :func:`_can_cut`).
        """
        size = CHUNK if nn.grad_enabled() else PIECE
        if B.xp is not np or len(x) <= size or not _can_cut(list(_layers(self.model))):
            return None
        return B.xp.array_split(x, math.ceil(len(x) / size))

    def _workers(self, count, grad):
        """The model and its replicas that run ``count`` chunks: chunk i runs on the i-th.

        A training step keeps every chunk's caches for backward, and a batch
        normalization in training mode keeps a chunk's deviations between its
        steps: one model or replica per chunk. Otherwise (inference) one per
        thread, piece i in thread ``i % threads``.
        """
        if grad or any(_batch_statistics(layer) for layer in _layers(self.model)):
            return [self.model] + self._replicas(count - 1)
        runners = [self.model] + self._replicas(self.threads - 1)
        return [runners[i % self.threads] for i in range(count)]

    def _tuner(self, grad, count):
        """The tuner of batches of ``count`` chunks, or None when they must run in one thread.

        One thread when only one is allowed, or when an active Dropout layer draws its
        masks: they must be drawn chunk after chunk, in order.
        """
        if _max_threads == 1 or (grad and any(isinstance(layer, nn.Dropout) and layer.training and layer.p > 0
                                              for layer in _layers(self.model))):
            return None
        key = (grad, count)
        if key not in self.tuners:
            # An inference batch (1000 images: about 0.1 s) is checked after fewer of them.
            self.tuners[key] = ThreadTuner(min(_max_threads, count), self._meter, check_every=25 if grad else 5)
        return self.tuners[key]

    def describe(self):
        """How the batches ran and why, in a few words (e.g. for a benchmark's report)."""
        parts = [f"{'training' if grad else 'inference'}, {count} chunks: {tuner.describe()}"
                 for (grad, count), tuner in sorted(self.tuners.items(), reverse=True)]
        return "; ".join(parts) if parts else "one thread"

    def _replicas(self, count):
        """``count`` replicas, rebuilt if the model's weight arrays were replaced.

        Also refreshes the parameter lists backward works with (``_params``, ``_replica_params``).
        """
        self._params = self.model.parameters()
        fresh = len(self.replicas) >= count and all(
            mine.data is theirs.data for params in self._replica_params for mine, theirs in zip(params, self._params)
        )
        if not fresh:
            self.replicas = [replicate(self.model) for _ in range(count)]
            self._replica_params = [r.parameters() for r in self.replicas]
        for r in self.replicas:
            r.train(self.model.training)
        return self.replicas[:count]
