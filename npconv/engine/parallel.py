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
Where no batch norm meets either (none in training mode), the pieces are not dealt
out in advance: each thread or process takes the next piece not yet taken
(:func:`_run_shared`), so a core slowed down -- by another program, or a slower
neighbour -- computes fewer of them; every piece is computed the same way, so
this too changes no number.

**Where** the chunks run -- one after another in the calling thread, spread
over several threads, or over this process and helper processes
(:mod:`npconv.engine.processes`, on a Python with the interpreter lock, where
threads wait for each other) -- changes no number: each chunk is computed the
same way wherever it runs and the sums are always taken in chunk order. So the
numbers of a run depend on its settings (and on the CPU's BLAS kernels), never
on the threads or the load, and the way can change at any step. A
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
segments (:func:`~npconv.engine.stages.cut_at_batch_norms`) that end at the batch norms; every chunk runs a
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
import itertools
import math
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
from threadpoolctl import ThreadpoolController

from .. import backend as B
from .. import nn
from . import processes
from .batchnorm import pooled
from .chain import Chain, kernel_for, layers_of
from .layout import batch_first, batch_last, is_batch_last
from .memory import keep_freed_memory
from .plan import using
from .stages import (WORTH_CUTTING, alone, backward_stages, chain_per_chunk, cut_at_batch_norms, forward_stages,
                     meeting, summed)
from .tuning import CoreMeter, InProcesses, ThreadTuner, cores_of, usable_cores

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

_max_threads = usable_cores()
_processes = True
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


def set_processes(on):
    """Spread the chunks over helper processes (True) or threads (False) where a model is not told otherwise
    (``DataParallel(processes=...)``). Default True: processes on a Python with the interpreter lock
    (:mod:`npconv.engine.processes`), threads on one without it or where processes cannot run."""
    global _processes
    if not isinstance(on, bool):
        raise ValueError(f"processes must be True or False, got {on!r}")
    _processes = on


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


def _helper_seconds():
    """The CPU time of this process's helper processes: their work is this process's (:class:`CoreMeter`)."""
    return processes.POOL.cpu_seconds()


def _run_stages(stages, values, threads, helpers=None):
    """Take every chunk's value through ``stages`` on ``threads`` threads, the calling one included; return the
    values after the last stage, in chunk order.

    Thread ``t`` runs chunks ``t, t + threads, ...`` of every threaded stage. The stages before the first
    threaded one and after the last run in the calling thread alone. Between, the threads are handed their work
    once and meet at a barrier after each stage, where the last to arrive runs the stage's meeting: a meeting then
    waits for one thread to wake up, where handing each stage to the pool anew waits for two (the caller's, then
    the worker's). The other threads run in a copy of the caller's context: they see its ``no_grad()``.

    With ``helpers`` (a list of :class:`~npconv.engine.processes.Helper`, already sent their chunks) the chunks are
    spread over processes instead: :func:`~npconv.engine.processes.run_apart`.
    """
    values, shared = list(values), None
    if helpers is not None:
        return processes.run_apart(stages, values, helpers)
    threads = min(threads, len(values), _max_threads)  # the pool has _max_threads - 1 threads: all meet at once
    band = [k for k, stage in enumerate(stages) if stage.threaded] if threads > 1 else []
    first, last = (band[0], band[-1]) if band else (len(stages), len(stages) - 1)
    for stage in stages[:first]:
        shared, values = alone(stage, values, shared)
    if band:
        shared, values = _together(stages[first : last + 1], values, shared, threads)
    for stage in stages[last + 1 :]:
        shared, values = alone(stage, values, shared)
    return values


def _together(stages, values, shared, threads):
    """:func:`_run_stages`'s band of stages on ``threads`` threads: ``(shared, values)`` after the last."""
    count = len(values)
    notes = [None] * count
    now = {"stage": 0, "shared": shared}  # the stage the threads are in, and what its tasks are given

    def meet():  # run by the last thread to reach the barrier, while the others wait
        now["shared"] = meeting(stages[now["stage"]], notes, now["shared"])
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
                    values[i], notes[i] = stage.task(i, values[i], now["shared"])
                if k < len(stages) - 1:  # the last stage's meeting waits for the workers' return, below
                    barrier.wait()
        except BaseException:
            barrier.abort()  # the other threads stop waiting (BrokenBarrierError) instead of hanging
            raise

    _on_threads(work, threads)
    return meeting(stages[-1], notes, now["shared"]), values


def _on_threads(work, threads):
    """Run ``work(t)`` for t = 0 .. ``threads`` - 1 at once: 0 in the calling thread, the others in the pool, in a copy
    of the caller's context (they see its ``no_grad()``). Returns when all are done; raises the first error -- a
    thread's own, not the broken barrier it left the others."""
    futures = [_pool().submit(contextvars.copy_context().run, work, t) for t in range(1, threads)]
    error = None
    try:
        work(0)
    except BaseException as e:
        error = e
    for future in futures:
        try:
            future.result()
        except BaseException as e:
            if error is None or isinstance(error, threading.BrokenBarrierError):
                error = e
    if error is not None:
        raise error


def _run_shared(runners, pieces):
    """An inference pass on threads, one per runner (a chain; the calling thread runs the first): each thread takes
    the next piece not yet taken until none is left, so a thread slowed down computes fewer. Returns the outputs
    in piece order. (Over processes: :func:`~npconv.engine.processes.run_shared`.)"""
    outputs, taken, lock = [None] * len(pieces), itertools.count(), threading.Lock()

    def work(t):
        while True:
            with lock:  # count's next() is one step under the interpreter lock, not on a Python without it
                i = next(taken)
            if i >= len(pieces):
                return
            outputs[i] = runners[t].forward(pieces[i])

    _on_threads(work, len(runners))  # a thread that fails stops; the others stop when the pieces run out
    return outputs


def _can_cut(layers):
    """Whether a network of ``layers`` may be cut into chunks and is worth it: every layer is
    per-sample (:data:`PER_SAMPLE`) or a batch normalization (in training mode its statistics are
    pooled over the chunks), and one of them is a convolution or a pooling layer (:data:`WORTH_CUTTING`)."""
    return (all(isinstance(layer, (*PER_SAMPLE, nn.BatchNorm1d, nn.BatchNorm2d)) for layer in layers)
            and any(isinstance(layer, WORTH_CUTTING) for layer in layers))


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
    (None: the batch was not cut), the batch norms' value counts, the threads, the tuner to tell the
    step's time (None: no timing), and whether helper processes computed some of the chunks."""

    sizes: list | None = None
    workers: list | None = None
    segments: list | None = None
    counts: list | None = None
    threads: int = 1
    tuner: ThreadTuner | None = None
    seconds: float = 0.0
    helpers: bool = False


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
    processes : bool, optional
        False: never spread the chunks over helper processes (:mod:`npconv.engine.processes`); True: the
        tuner may, and with ``threads`` the chunks go to ``threads - 1`` helpers instead of threads. None:
        as :func:`set_processes` says (by default, like True).

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

    def __init__(self, model, plan=None, threads=None, processes=None):
        if not isinstance(model, nn.Sequential):
            raise TypeError(f"DataParallel needs a Sequential model, got {type(model).__name__}")
        self.model = model
        self.plan = plan
        self.fixed_threads = threads
        self.processes = processes
        self._hosting = None  # the model as the helper processes hold it, once they do
        if B.xp is np:
            keep_freed_memory()
        self.chain = Chain(kernel_for(layer) for layer in layers_of(model))
        self.cuttable = _can_cut([kernel.layer for kernel in self.chain.kernels])  # the layers never change
        self.replicas = []
        self.sizes = None
        self.threads = 1
        self.tuners = {}  # (grad enabled, number of chunks) -> ThreadTuner
        self._meter = CoreMeter(helpers=_helper_seconds)
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
        way = tuner.threads() if tuner else 1  # a thread count, or InProcesses
        if tuner is not None and self.fixed_threads is not None:
            way, tuner = (InProcesses(self.fixed_threads) if self.processes and self.fixed_threads > 1
                          else self.fixed_threads), None
        threads = min(cores_of(way), _max_threads, len(chunks))
        self.threads = threads
        counts = []  # per batch normalization: the values per channel of the whole batch

        def meet(segment, moments):  # the whole batch's statistics, from every chunk's moments, in chunk order
            statistics = pooled(moments)
            counts.append(sum(m.count for m in moments))
            segment.after[0].track(*statistics, counts[-1])  # the model's own layer
            return statistics

        with one_blas_thread(), self._helpers(threads, len(chunks), isinstance(way, InProcesses)) as helpers:
            if not chain_per_chunk(self.chain.kernels, grad):  # inference without meetings: the pieces are shared
                out = _join(self._share(chunks, threads, helpers))
            else:
                if helpers is not None:
                    self._hosting.start_forward(helpers, self.model.training, grad, chunks)
                # After the helpers have their chunks: they get ready while this thread does.
                workers = self._workers(len(chunks))
                segments = cut_at_batch_norms(workers)
                out = _join(_run_stages(forward_stages(segments, meet), chunks, threads, helpers))
        seconds = time.perf_counter() - started
        if grad:
            self._step = _Step(sizes, workers, segments, counts, threads, tuner, seconds,
                               helpers is not None)  # ends with its backward
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
        count = len(step.sizes)
        mine = range(0, count, threads) if step.helpers else range(count)  # the chunks computed in this process
        replica_params = {i: step.workers[i].parameters() for i in mine if i > 0}
        for params in replica_params.values():
            for p in params:
                p.grad.fill(0)
        dys = _split(dy, step.sizes)
        with one_blas_thread(), self._helpers(threads, count, step.helpers, backward=True) as helpers:
            if helpers is not None:
                self._hosting.start_backward(helpers, step.counts, input_grad, dys)
            dys = _run_stages(backward_stages(step.segments, step.counts, input_grad, summed), dys, threads,
                              helpers)
            dy = _join(dys) if input_grad else None
        own = self.chain.parameters()
        for i in range(1, count):  # chunk order: the same sums on every run, wherever the chunks ran
            grads = ([p.grad for p in replica_params[i]] if i in replica_params
                     else self._hosting.gradients_of(i % threads - 1, i // threads))
            for p, g in zip(own, grads):
                p.grad += g
        if step.tuner is not None:
            step.tuner.record(step.seconds + time.perf_counter() - started)
        self._step = replace(step, tuner=None)  # timed once
        return dy

    @contextlib.contextmanager
    def _helpers(self, threads, count, wanted, backward=False):
        """The helper processes to spread a pass of ``count`` chunks over (``threads - 1`` of them), or None: run
        on threads.

        A forward runs on processes where they are ``wanted`` (the tuner chose :class:`InProcesses`) and no other
        pass is using them, else on threads; a backward where its forward did (``wanted``): its chunks' caches are
        there, so it waits for them. A helper's failure stops the helpers for good: the error is raised, and later
        passes run on threads.
        """
        if threads < 2 or not wanted or not (backward or self._processes_possible()):
            yield None
            return
        pool = processes.POOL
        if not pool.lock.acquire(blocking=backward):
            yield None
            return
        try:
            if self._hosting is None:
                self._hosting = processes.Hosting(self.model, self.plan)
                weakref.finalize(self, pool.drop, self._hosting.id)
            try:
                helpers = self._hosting.helpers(threads - 1, -(-count // threads))
            except processes.HelperError as e:
                pool.stop(e)
                if backward:
                    raise
                helpers = None  # could not start one: this pass and every later one on threads
            try:
                yield helpers
            except processes.HelperError as e:
                pool.stop(e)
                raise
            except BaseException:
                if helpers is not None:  # a pass left half-done in the helpers: their next messages are not ours
                    pool.close()
                raise
        finally:
            pool.lock.release()

    def _processes_possible(self):
        """Whether this model's chunks may go to helper processes: allowed (``processes``, else
        :func:`set_processes`), NumPy arrays, and helpers can run here and have not failed."""
        allowed = self.processes if self.processes is not None else _processes
        return bool(allowed) and B.xp is np and processes.POOL.broken is None and processes.available()

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

    def _workers(self, count):
        """The chains that run ``count`` chunks, chunk i on the i-th: a training step keeps every chunk's caches for
        backward, and a batch normalization in training mode keeps a chunk's deviations between its steps."""
        return [self.chain] + self._replicas(count - 1)

    def _share(self, pieces, threads, helpers):
        """The outputs of an inference pass without meetings, its pieces taken one at a time by whichever of
        ``threads`` threads -- or of this process and the ``helpers`` -- is free; each runs a chain of its own."""
        if helpers is not None:
            self._hosting.start_sharing(helpers, self.model.training, pieces)
            return processes.run_shared(self.chain, pieces, helpers)
        return _run_shared([self.chain] + self._replicas(threads - 1), pieces)

    def _tuner(self, grad, count):
        """The tuner of batches of ``count`` chunks, or None when they must run in one thread.

        One thread when only one is allowed, or when an active Dropout layer draws its
        masks (in a training step, or under ``no_grad()`` in training mode): they must be
        drawn chunk after chunk, in order.
        """
        if _max_threads == 1 or any(isinstance(kernel.layer, nn.Dropout) and kernel.layer.training
                                    and kernel.layer.p > 0 for kernel in self.chain.kernels):
            return None
        key = (grad, count)
        if key not in self.tuners:
            cores, processes_possible = min(_max_threads, count), self._processes_possible()
            if chain_per_chunk(self.chain.kernels, grad):  # chunks that meet, or keep caches: one thread first
                start = 1
            else:  # an inference batch's pieces go to whichever core is free: a busy core costs it little
                start = InProcesses(cores) if processes_possible else cores
            # An inference batch (1000 images) is checked after fewer of them (docs/performance.md).
            self.tuners[key] = ThreadTuner(cores, self._meter, check_every=25 if grad else 5,
                                           processes=processes_possible, start=start)
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
