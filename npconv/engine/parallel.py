"""Data parallelism over the batch: :class:`DataParallel` computes a batch in fixed chunks, on one or more threads.

A training step on a batch of N images is, for all the maths, N independent
computations whose parameter gradients are summed at the end. So
``DataParallel(model)`` cuts a batch into chunks of at most :data:`CHUNK`
images -- always the same chunks for the same batch size, on any machine, under
any load, with any number of threads -- and

* runs the whole network on each chunk, as a :class:`~npconv.engine.chain.Chain`
  of kernels: the first chunk on the model's own kernels, the others on
  *replicas* that share the model's weight arrays (the same ``Parameter.data``)
  but keep their own caches and gradients;
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
:class:`~npconv.engine.tuning.ThreadTuner` chooses it by timing the run's own
steps. The worker threads run in a copy of the calling thread's context, so they
see its ``no_grad()``.

BLAS runs on **one thread** inside the chunks: OpenBLAS's result depends on its
own thread count for some products (threaded, it cuts a long sum differently),
and where another program keeps a core busy, OpenBLAS's waiting threads spin.

**What is cut** (:func:`_can_cut`): a network whose every layer treats each
sample on its own -- or is a batch normalization, see below -- and one of them
a convolution or a pooling layer. It is **not** cut when a layer mixes samples
in another way, when it is only a few Linear layers (matrix products, cheaper
on the whole batch), or with an array backend other than NumPy. Such a batch
runs with NumPy's BLAS as configured (``OPENBLAS_NUM_THREADS`` sets its threads).
With a Dropout layer active, the chunks run one after another, never on
threads: the masks come from one generator and must be drawn in chunk order.

**Batch normalization.** In training mode a BatchNorm layer normalizes with the
mean and variance of the *whole* batch, so the chunks meet at every such layer,
as PyTorch's SyncBatchNorm has its devices meet: the network is cut into
segments (:func:`_segments`) that end at the batch norms; every chunk runs a
segment and takes the :class:`~npconv.engine.batchnorm.Moments` of its values;
the threads meet at a barrier, and the last to arrive pools them, in chunk order,
into the whole batch's mean and variance (:func:`~npconv.engine.batchnorm.pooled`)
and moves the running statistics once; then every chunk normalizes with them and
runs the next segment (:func:`_run_stages`). Backward meets the same way: every
chunk's ``dbeta`` and ``dgamma`` are added up before any chunk computes its ``dx``.
Which thread pools changes no number: the sums are always taken in chunk order.
In evaluation mode a BatchNorm layer uses its running statistics and the network
is one segment.

The measurements behind the constants are in ``docs/performance.md``.
"""

import contextlib
import contextvars
import ctypes
import itertools
import math
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
from threadpoolctl import ThreadpoolController

from .. import backend as B
from .. import nn
from .batchnorm import pooled
from .chain import Chain, kernel_for, layers_of
from .layout import batch_first, batch_last, is_batch_last
from .plan import using
from .tuning import CoreMeter, ThreadTuner, usable_cores

#: Images per chunk of a training batch: cutting costs little CPU time where one core is free, and
#: lets two threads share a batch of 100 where two are (docs/performance.md, "chunks").
CHUNK = 50

#: Images per piece of an inference batch (under ``no_grad()``): small enough to stay in the caches
#: (docs/performance.md, "chunks").
PIECE = 100

#: Layers that compute each sample on its own, so a batch can be cut into chunks
#: (Dropout too: its masks are independent per element).
PER_SAMPLE = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.Linear, nn.Flatten, nn.ReLU, nn.Sigmoid, nn.Tanh,
              nn.Dropout)

#: Layers that make a network worth cutting into chunks: without one, it is a few matrix
#: products, cheaper on the whole batch (docs/performance.md, "chunks").
WORTH_CUTTING = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


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


_blas_lock = threading.Lock()
_blas_users = 0      # threads inside one_blas_thread() now
_blas_before = None  # the BLAS libraries' thread counts when the first of them entered


@contextlib.contextmanager
def one_blas_thread():
    """A context in which NumPy's BLAS uses one thread; costs a few microseconds.

    BLAS's thread count is the process's, so the first thread to enter sets it
    to 1 and the last to leave restores it (two threads computing at once, say a
    training step and an inference, never restore it under each other's feet).
    So while one thread is inside, a batch the engine does not cut (the mlp's,
    run with BLAS as configured) in another thread also gets one BLAS thread:
    the same numbers only where BLAS runs one thread anyway (``OPENBLAS_NUM_THREADS=1``).
    threadpoolctl finds the BLAS libraries once; entering and leaving then only
    set their thread counts.
    """
    global _blas, _blas_users, _blas_before
    with _blas_lock:
        if _blas is None:
            _blas = [lib for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas"]
        if _blas_users == 0:
            _blas_before = [lib.get_num_threads() for lib in _blas]
            for lib, n in zip(_blas, _blas_before):
                if n != 1:
                    lib.set_num_threads(1)
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                for lib, n in zip(_blas, _blas_before):
                    if n != 1:
                        lib.set_num_threads(n)


#: ``mallopt`` parameters of glibc (malloc.h): sizes from which freed memory goes back to the system.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_memory_kept = False


def keep_freed_memory():
    """Let the C library keep the memory of freed arrays for the next ones (glibc only; once per process).

    A training step allocates and frees the same large temporaries every time. By default glibc returns
    a freed block of more than a few hundred KB to the system and maps fresh pages for the next one: every
    page is then faulted in and zeroed again, thousands of page faults a step, taken while holding the
    interpreter lock and, with two threads, contending for the process's memory map (docs/performance.md,
    "page faults"). Raising the two thresholds keeps that memory in the process, where the next step reuses
    it. Where the memory comes from changes no number.
    """
    global _memory_kept
    if _memory_kept or not sys.platform.startswith("linux"):
        return
    _memory_kept = True
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return
    mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # glibc's largest: blocks below 32 MB come from the heap
    mallopt(_M_TRIM_THRESHOLD, 256 << 20)  # free memory at the heap's top goes back to the system above 256 MB


@dataclass
class _Stage:
    """One stage of a batch's computation, the same for every chunk.

    ``task(i, value, shared) -> value`` takes chunk i's value through the stage
    (``shared``: what the previous stage's meeting gave, None before the first);
    ``meet(values) -> (shared, values)``, if not None, runs once every chunk has
    finished the stage, in one thread (the chunks' meeting at a batch norm);
    ``threaded`` False: the stage's chunks run one after another in the calling thread.
    """

    task: Callable
    meet: Callable | None
    threaded: bool


def _run_stages(stages, values, threads):
    """Take every chunk's value through ``stages`` on ``threads`` threads, the calling one included; return the
    values after the last stage, in chunk order.

    Thread ``t`` runs chunks ``t, t + threads, ...`` of every threaded stage. The stages before the first
    threaded one and after the last run in the calling thread alone. Between, the threads are handed their work
    once and meet at a barrier after each stage, where the last to arrive runs the stage's meeting: a meeting then
    waits for one thread to wake up, where handing each stage to the pool anew waits for two (the caller's, then
    the worker's). The other threads run in a copy of the caller's context: they see its ``no_grad()``.
    """
    values, shared = list(values), None
    threads = min(threads, len(values), _max_threads)  # the pool has _max_threads - 1 threads: all meet at once
    band = [k for k, stage in enumerate(stages) if stage.threaded] if threads > 1 else []
    first, last = (band[0], band[-1]) if band else (len(stages), len(stages) - 1)
    for stage in stages[:first]:
        shared, values = _alone(stage, values, shared)
    if band:
        shared, values = _together(stages[first : last + 1], values, shared, threads)
    for stage in stages[last + 1 :]:
        shared, values = _alone(stage, values, shared)
    return values


def _alone(stage, values, shared):
    """One stage in the calling thread, chunk after chunk, and its meeting: ``(shared, values)`` after it."""
    return _meeting(stage, [stage.task(i, value, shared) for i, value in enumerate(values)], shared)


def _meeting(stage, values, shared):
    """The stage's meeting, if it has one: ``(shared, values)`` for the next stage."""
    return stage.meet(values) if stage.meet is not None else (shared, values)


def _together(stages, values, shared, threads):
    """:func:`_run_stages`'s band of stages on ``threads`` threads: ``(shared, values)`` after the last."""
    count = len(values)
    now = {"stage": 0, "shared": shared}  # the stage the threads are in, and what its tasks are given

    def meet():  # run by the last thread to reach the barrier, while the others wait
        now["shared"], values[:] = _meeting(stages[now["stage"]], values, now["shared"])
        now["stage"] += 1

    barrier = threading.Barrier(threads, action=meet)

    def work(t):
        try:
            for k, stage in enumerate(stages):
                if stage.threaded:
                    mine = range(t, count, threads)
                else:  # all of it in the calling thread
                    mine = range(count) if t == 0 else range(0)
                for i in mine:
                    values[i] = stage.task(i, values[i], now["shared"])
                if k < len(stages) - 1:  # the last stage's meeting waits for the workers' return, below
                    barrier.wait()
        except BaseException:
            barrier.abort()  # the other threads stop waiting (BrokenBarrierError) instead of hanging
            raise

    futures = [_pool().submit(contextvars.copy_context().run, work, t) for t in range(1, threads)]
    error = None
    try:
        work(0)
    except BaseException as e:
        error = e
    for future in futures:
        try:
            future.result()
        except BaseException as e:  # the thread's own error, not the broken barrier it left the others
            if error is None or isinstance(error, threading.BrokenBarrierError):
                error = e
    if error is not None:
        raise error
    return _meeting(stages[-1], values, now["shared"])


def _can_cut(layers):
    """Whether a network of ``layers`` may be cut into chunks and is worth it: every layer is
    per-sample (:data:`PER_SAMPLE`) or a batch normalization (in training mode its statistics are
    pooled over the chunks), and one of them is a convolution or a pooling layer (:data:`WORTH_CUTTING`)."""
    return (all(isinstance(layer, (*PER_SAMPLE, nn.BatchNorm1d, nn.BatchNorm2d)) for layer in layers)
            and any(isinstance(layer, WORTH_CUTTING) for layer in layers))


@dataclass
class _Segment:
    """The kernels between two batch normalizations (training mode), for every chunk.

    Chunk ``i`` runs ``chains[i]`` (a Chain of chunk i's kernels), after normalizing
    with ``before[i]`` (the batch-norm kernel that ends the previous segment) and
    before taking the moments of ``after[i]`` (the one that ends this segment);
    None at the network's two ends. A segment without a convolution or a pooling
    layer (:data:`WORTH_CUTTING`: ``cnn-bn``'s head) is too small to hand to
    another thread: its chunks run one after another in the calling thread
    (``threaded`` False; docs/performance.md, "chunks").
    """

    chains: list
    before: list | None
    after: list | None

    @property
    def threaded(self):
        return any(isinstance(kernel.layer, WORTH_CUTTING) for kernel in self.chains[0].kernels)


def _segments(workers):
    """The network of ``workers`` (one Chain per chunk) cut at its batch normalizations."""
    kernels = [worker.kernels for worker in workers]
    bounds = [i for i, kernel in enumerate(kernels[0]) if _batch_statistics(kernel.layer)]
    segments, start = [], 0
    for stop in bounds + [len(kernels[0])]:
        segments.append(_Segment([Chain(mine[start:stop]) for mine in kernels],
                                 [mine[start - 1] for mine in kernels] if start else None,
                                 [mine[stop] for mine in kernels] if stop < len(kernels[0]) else None))
        start = stop + 1
    return segments


def _split(a, sizes):
    """``a`` cut along the batch axis into pieces of ``sizes`` images (views)."""
    return B.xp.split(a, list(itertools.accumulate(sizes[:-1])))


def _join(pieces):
    """The ``pieces`` joined along the batch axis, in order.

    Batch-last pieces (a convolution kernel's outputs and what element-wise kernels
    make of them) are joined batch-last, so that the kernel that takes the whole
    batch (a BatchNorm2d) reads it without another copy.
    """
    if all(is_batch_last(p) for p in pieces):
        return batch_first(B.xp.concatenate([batch_last(p) for p in pieces], axis=-1))
    return B.xp.concatenate(pieces)


@dataclass
class _Step:
    """What backward needs of a training forward: its chunk sizes, the chains that ran them and their segments
    (None: the batch was not cut), the batch norms' value counts, the threads, and the tuner to tell the
    step's time (None: no timing)."""

    sizes: list | None = None
    workers: list | None = None
    segments: list | None = None
    counts: list | None = None
    threads: int = 1
    tuner: ThreadTuner | None = None
    seconds: float = 0.0


class DataParallel:
    """Run a :class:`~npconv.nn.Sequential` with the engine's kernels over fixed chunks of the batch.

    ``DataParallel(model)(x)`` and ``.backward(dy, input_grad)`` compute what
    ``model(x)`` and ``model.backward(dy, input_grad)`` compute (the same
    numbers up to rounding, the same ``.grad`` of the model's parameters); the
    model itself is unchanged and is still the one to save, train or inspect.
    ``train()``, ``eval()``, ``training`` and ``parameters()`` are the model's.

    Parameters
    ----------
    model : Sequential
    plan : Plan, optional
        The engine's choices for this model on this machine (:mod:`npconv.engine.plan`); None: the
        built-in constants (:data:`CHUNK`, :data:`PIECE` and those of the kernels' modules).
    threads : int, optional
        Run the chunks on this many threads (at most :func:`get_num_threads`) instead of the count a
        :class:`~npconv.engine.tuning.ThreadTuner` chooses: for measuring how a step scales. The
        numbers are the same either way.

    Attributes
    ----------
    sizes : list of int or None
        The chunk sizes of the last training forward; None when the batch was not cut.
    threads : int
        The threads the last forward used.
    cuttable : bool
        Whether the network can be cut into chunks and is worth it (:func:`_can_cut`).
    tuners : dict
        ``(grad enabled, number of chunks) ->`` the :class:`~npconv.engine.tuning.ThreadTuner`
        of such batches: training steps and inference batches are timed apart.
    """

    def __init__(self, model, plan=None, threads=None):
        if not isinstance(model, nn.Sequential):
            raise TypeError(f"DataParallel needs a Sequential model, got {type(model).__name__}")
        self.model = model
        self.plan = plan
        self.fixed_threads = threads
        if B.xp is np:
            keep_freed_memory()
        self.chain = Chain(kernel_for(layer) for layer in layers_of(model))
        self.cuttable = _can_cut([kernel.layer for kernel in self.chain.kernels])  # the layers never change
        self.replicas = []
        self.sizes = None
        self.threads = 1
        self.tuners = {}  # (grad enabled, number of chunks) -> ThreadTuner
        self._meter = CoreMeter()
        self._step = None  # what backward needs of the last training forward

    # --- the model's interface -----------------------------------------------
    @property
    def training(self):
        return self.model.training

    def train(self, mode=True):
        self.model.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def parameters(self):
        return self.model.parameters()

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):
        with using(self.plan):  # the kernels read the plan's block sizes, in every thread
            return self._forward(x)

    def _forward(self, x):
        started = time.perf_counter()
        grad = nn.grad_enabled()
        if grad:
            self._step = None
        chunks = self.chunks(x)
        if chunks is None:  # the model's kernels on the whole batch, with BLAS as configured
            self.sizes, self.threads = None, 1
            if grad:
                self._step = _Step()
            return self.chain.forward(x)
        self.sizes = sizes = [len(c) for c in chunks]
        tuner = self._tuner(grad, len(chunks))
        threads = min(tuner.threads(), _max_threads) if tuner else 1
        if tuner is not None and self.fixed_threads is not None:
            threads, tuner = min(self.fixed_threads, _max_threads, len(chunks)), None
        self.threads = threads
        workers = self._workers(len(chunks), grad, threads)
        segments = _segments(workers)
        counts = []  # per batch normalization: the values per channel of the whole batch

        def stage(segment):
            def task(i, h, statistics):
                if segment.before is not None:
                    h = segment.before[i].normalize(*statistics)
                h = segment.chains[i].forward(h)
                return h if segment.after is None else segment.after[i].moments(h)

            def meet(moments):  # the whole batch's statistics, from every chunk's moments, in chunk order
                statistics = pooled(moments)
                counts.append(sum(m.count for m in moments))
                segment.after[0].track(*statistics, counts[-1])  # the model's own layer
                return statistics, moments

            return _Stage(task, meet if segment.after is not None else None, segment.threaded)

        with one_blas_thread():
            out = _join(_run_stages([stage(segment) for segment in segments], chunks, threads))
        seconds = time.perf_counter() - started
        if grad:
            self._step = _Step(sizes, workers, segments, counts, threads, tuner, seconds)  # ends with its backward
        elif tuner is not None:
            tuner.record(seconds)
        return out

    def backward(self, dy, input_grad=True):
        """Backpropagate ``dy`` (see :meth:`npconv.nn.Sequential.backward`)."""
        with using(self.plan):
            return self._backward(dy, input_grad)

    def _backward(self, dy, input_grad):
        step = self._step
        if step is None:
            raise RuntimeError("Sequential.backward() called before forward()")
        if step.segments is None:
            return self.chain.backward(dy, input_grad)
        started = time.perf_counter()
        threads = step.threads
        replica_params = [worker.parameters() for worker in step.workers[1:]]
        for params in replica_params:
            for p in params:
                p.grad.fill(0)

        def stage(k):
            segment = step.segments[k]
            needed = input_grad or k > 0  # the gradient of a segment's input (the network's: if asked for)

            def task(i, d, sums):
                if segment.after is not None:
                    d = segment.after[i].input_gradient(d, sums, step.counts[k])
                d = segment.chains[i].backward(d, needed)
                return d if segment.before is None else (d, segment.before[i].gradient_sums(d))

            def meet(results):  # the whole batch's dbeta and dgamma, summed in chunk order
                return tuple(sum(parts) for parts in zip(*(s for _, s in results))), [d for d, _ in results]

            return _Stage(task, meet if segment.before is not None else None, segment.threaded)

        with one_blas_thread():
            dys = _run_stages([stage(k) for k in reversed(range(len(step.segments)))], _split(dy, step.sizes),
                              threads)
            dy = _join(dys) if input_grad else None
        own = self.chain.parameters()
        for params in replica_params:  # chunk order: the same sums on every run, with any number of threads
            for mine, theirs in zip(own, params):
                mine.grad += theirs.grad
        if step.tuner is not None:
            step.tuner.record(step.seconds + time.perf_counter() - started)
        self._step = replace(step, tuner=None)  # timed once
        return dy

    # --- how to cut and where to run -------------------------------------------
    def chunks(self, x):
        """The chunks ``x`` is computed in (a list of views), or None when it is not cut.

        :data:`CHUNK` images per chunk for a training batch, :data:`PIECE` under
        ``no_grad()``; sizes as equal as possible (``numpy.array_split``). Not cut
        when the network cannot be cut or is not worth it (see :func:`_can_cut`).
        """
        chunk, piece = (CHUNK, PIECE) if self.plan is None else (self.plan.chunk, self.plan.piece)
        size = chunk if nn.grad_enabled() else piece
        if B.xp is not np or len(x) <= size or not self.cuttable:
            return None
        return B.xp.array_split(x, math.ceil(len(x) / size))

    def _workers(self, count, grad, threads):
        """The chains that run ``count`` chunks: chunk i runs on the i-th.

        A training step keeps every chunk's caches for backward, and a batch
        normalization in training mode keeps a chunk's deviations between its
        steps: one chain per chunk. Otherwise (inference) one per thread, piece i
        in thread ``i % threads``.
        """
        if grad or any(_batch_statistics(kernel.layer) for kernel in self.chain.kernels):
            return [self.chain] + self._replicas(count - 1)
        runners = [self.chain] + self._replicas(threads - 1)
        return [runners[i % threads] for i in range(count)]

    def _tuner(self, grad, count):
        """The tuner of batches of ``count`` chunks, or None when they must run in one thread.

        One thread when only one is allowed, or when an active Dropout layer draws its
        masks: they must be drawn chunk after chunk, in order.
        """
        if _max_threads == 1 or (grad and any(isinstance(kernel.layer, nn.Dropout) and kernel.layer.training
                                              and kernel.layer.p > 0 for kernel in self.chain.kernels)):
            return None
        key = (grad, count)
        if key not in self.tuners:
            # An inference batch (1000 images) is checked after fewer of them.
            self.tuners[key] = ThreadTuner(min(_max_threads, count), self._meter, check_every=25 if grad else 5)
        return self.tuners[key]

    def describe(self):
        """How the batches ran and why, in a few words (e.g. for a benchmark's report)."""
        parts = [f"{'training' if grad else 'inference'}, {count} chunks: {tuner.describe()}"
                 for (grad, count), tuner in sorted(self.tuners.items(), reverse=True)]
        return "; ".join(parts) if parts else "one thread"

    def _replicas(self, count):
        """``count`` replicas of the model's chain, rebuilt if the model's weight arrays were replaced."""
        own = self.chain.parameters()
        fresh = len(self.replicas) >= count and all(
            mine.data is theirs.data for replica in self.replicas for mine, theirs in zip(own, replica.parameters())
        )
        if not fresh:
            self.replicas = [self.chain.replicate() for _ in range(count)]
        return self.replicas[:count]
