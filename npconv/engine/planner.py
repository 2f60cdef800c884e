"""Choosing a :class:`~npconv.engine.plan.Plan` by timing candidates on this machine, and remembering it.

:func:`measure` times each candidate on one chunk's training step (forward and
backward, one thread: what each thread runs), in interleaved rounds, in the CPU
time of the thread, and keeps the fastest median; :func:`plan_for` remembers
the choice in the user's cache folder, keyed by the CPU, the BLAS, the model's
layers, the input, the batch size and npconv's version, so that it costs a
second or two once per machine and model, and nothing afterwards.
"""

import contextlib
import copy
import hashlib
import json
import os
import platform
import statistics
import time
from dataclasses import replace

import numpy as np

from .. import __version__
from .. import backend as B
from .. import nn
from ..io import read_json, write_json
from .chain import Chain, kernel_for, layers_of
from .conv import Conv2dKernel
from .memory import keep_freed_memory
from .parallel import one_blas_thread
from .plan import BUILT_IN, Plan, PlanError, using
from .tuning import CoreMeter, usable_cores


#: Multiply-adds per block tried for blocked products (2**18 is the built-in one).
BLOCK_MACS_CANDIDATES = (1 << 17, 1 << 18, 1 << 19)

#: Bytes per block of output rows tried (1 MB is the built-in one).
BLOCK_BYTES_CANDIDATES = (512 << 10, 1 << 20, 2 << 20)

#: Bytes of ``cols`` up to which a convolution is one product, tried (4 MB is the built-in one): a core's
#: level-2 cache differs from CPU to CPU.
WHOLE_BYTES_CANDIDATES = (2 << 20, 4 << 20, 8 << 20)

#: The way of choosing, part of the cache key: a plan chosen another way is measured again.
METHOD = 2


def candidates(base=BUILT_IN):
    """The plans :func:`measure` times, built-in first: products whole or in blocks of each size, then row
    blocks of each size, then each size up to which a convolution stays one product (the chunk sizes stay:
    they decide how a batch norm pools its statistics)."""
    plans = [replace(base, blocked_products=False)]
    plans += [replace(base, blocked_products=True, block_macs=m) for m in BLOCK_MACS_CANDIDATES]
    plans += [replace(base, block_bytes=b) for b in BLOCK_BYTES_CANDIDATES]
    plans += [replace(base, whole_bytes=b) for b in WHOLE_BYTES_CANDIDATES]
    unique = [base]
    for plan in plans:
        if not any(plan.same_numbers(p) for p in unique):
            unique.append(plan)
    return unique


def _twin(model, training):
    """A copy of ``model`` in training or evaluation mode, as a :class:`Chain` (its running statistics and
    gradients move; the run's model's do not), and its dtype."""
    twin = copy.deepcopy(model)
    twin.train(training)
    chain = Chain(kernel_for(layer) for layer in layers_of(twin))
    return chain, next((p.data.dtype for p in twin.parameters()), np.dtype(np.float32))


def _inputs(images, input_shape, dtype):
    return B.xp.asarray(np.random.default_rng(0).standard_normal((images, *input_shape)).astype(dtype))


def chunk_step(model, input_shape, images):
    """A function that runs one training step (forward and backward, no optimizer) of a copy of ``model``
    on ``images`` random inputs of ``input_shape`` under the plan it is given, on this thread."""
    chain, dtype = _twin(model, training=True)
    x = _inputs(images, input_shape, dtype)
    dy = [None]

    def step(plan):
        with using(plan), one_blas_thread():
            y = chain.forward(x)
            if dy[0] is None:
                dy[0] = B.xp.full(y.shape, 1 / y.size, dtype=y.dtype)
            chain.backward(dy[0], input_grad=False)
    return step


def piece_pass(model, input_shape, images):
    """A function that runs one inference pass (evaluation mode, ``no_grad()``) of a copy of ``model`` on
    ``images`` random inputs of ``input_shape`` under the plan it is given, on this thread."""
    chain, dtype = _twin(model, training=False)
    x = _inputs(images, input_shape, dtype)

    def step(plan):
        with using(plan), one_blas_thread(), nn.no_grad():
            chain.forward(x)
    return step


def convolutions(model, input_shape):
    """Each convolution of ``model`` as the engine runs it, with the shape of one image it gets (C, H, W)."""
    chain, dtype = _twin(model, training=False)
    x, found = _inputs(1, input_shape, dtype), []
    with nn.no_grad():
        for i in chain.order:
            kernel = chain.kernels[i]
            if isinstance(kernel, Conv2dKernel):
                found.append((kernel, x.shape[1:]))
            x = kernel.forward(x)
    return found


def computes(plan, convs, images):
    """What ``plan`` makes the engine compute on a step of ``images`` images: how it cuts products (whole, or
    in blocks of how many multiply-adds) and each convolution's row blocks (``convs`` from
    :func:`convolutions`). Plans that give the same compute the same."""
    with using(plan):
        rows = tuple(tuple(kernel.row_blocks((images, *shape))) for kernel, shape in convs)
    return plan.blocked_products, plan.block_macs if plan.blocked_products else None, rows


#: The two steps a candidate is timed on: a chunk's training step and a piece's inference pass.
STEPS = ("training", "inference")


def measure(model, input_shape, batch_size, *, rounds=15, time_step=None, base=BUILT_IN):
    """The fastest of :func:`candidates` for ``model`` on batches of ``batch_size`` inputs of ``input_shape``,
    and each candidate's timings.

    Each step of :data:`STEPS` -- a chunk's training step (:func:`chunk_step`), a piece's inference pass
    (:func:`piece_pass`) -- is timed for every distinct computation the candidates give it
    (:func:`computes`): once to warm up, then ``rounds`` times, taking turns, each round begun by another.
    A candidate's time is the built-in plan's median times the median of its ratios to the built-in plan
    in the same round: a slow spell of the machine slows both. A step is timed in the CPU time of its
    thread, which other programs on a busy machine leave nearly unchanged (its wall time they do not).
    A candidate costs its training step's seconds per image plus its inference pass's seconds per image,
    and must beat the built-in plan by 2 % to be chosen: a tie keeps npconv's usual numbers.
    ``time_step(plan, step)`` (default: timing the real step) returns one step's seconds -- tests give
    fake timings.
    """
    if time_step is None and not any(isinstance(layer, nn.Conv2d) for layer in layers_of(model)):
        return base, []  # the candidates differ only in how convolutions compute: nothing to choose
    plans = candidates(base)
    images = {"training": min(base.chunk, batch_size), "inference": base.piece}
    convs = convolutions(model, input_shape)
    if time_step is None:
        keep_freed_memory()  # as the run will compute: its temporaries' pages are not faulted in every step
        runs = {"training": chunk_step(model, input_shape, images["training"]),
                "inference": piece_pass(model, input_shape, images["inference"])}

        def time_step(plan, step):
            started = time.thread_time()
            runs[step](plan)
            return time.thread_time() - started
    # On each step, the candidates that compute the same share one timing: that of the first of them.
    work = {step: [computes(plan, convs, images[step]) for plan in plans] for step in STEPS}
    first = {step: {} for step in STEPS}
    for step in STEPS:
        for i, key in enumerate(work[step]):
            first[step].setdefault(key, i)
    estimate = {}
    for step in STEPS:  # one step at a time: each timing follows a step of the same kind, in warm caches
        timed = sorted(first[step].values())  # the built-in plan (0) first
        times = {i: [] for i in timed}
        for r in range(-1, rounds):  # round -1 warms up
            for i in timed[r % len(timed):] + timed[: r % len(timed)]:  # each round starts with another
                seconds = time_step(plans[i], step)
                if r >= 0:
                    times[i].append(seconds)
        # Against the built-in plan's time in the same round, so that a slow spell of the machine cancels out.
        base_seconds = statistics.median(times[0])
        estimate.update({(step, i): base_seconds * statistics.median(a / b for a, b in zip(t, times[0]))
                         for i, t in times.items()})
    seconds = [{step: estimate[step, first[step][work[step][i]]] for step in STEPS} for i in range(len(plans))]
    cost = [sum(s[step] / images[step] for step in STEPS) for s in seconds]
    best = min(range(len(plans)), key=lambda i: cost[i] * (1 if plans[i].same_numbers(base) else 1.02))
    return replace(plans[best], origin="measured"), list(zip(plans, seconds))


# --- remembering -----------------------------------------------------------------

def cache_folder():
    """Where measured plans are kept: ``$NPCONV_PLAN_CACHE``, else ``$XDG_CACHE_HOME/npconv/plans``, else
    ``~/.cache/npconv/plans``."""
    if os.environ.get("NPCONV_PLAN_CACHE"):
        return os.environ["NPCONV_PLAN_CACHE"]
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "npconv", "plans")


def machine_key():
    """What makes one machine's timings another's: the CPU model, its cores and NumPy's BLAS kernels."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        info = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        cpu = f"{info.get('model name', cpu)} (family {info.get('cpu family')}, model {info.get('model')})"
    try:
        from threadpoolctl import threadpool_info
        blas = [f"{i['internal_api']} {i.get('version')} {i.get('architecture')}" for i in threadpool_info()
                if i["user_api"] == "blas"]
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        blas = []
    return {"cpu": cpu, "cores": usable_cores(), "blas": blas, "numpy": np.__version__}


def plan_key(model, input_shape, batch_size):
    """The cache key of a plan: the machine, the model's layers, the input, the batch size, npconv's version
    and the planner's :data:`METHOD`."""
    dtype = next((str(p.data.dtype) for p in model.parameters()), "float32")
    return {"machine": machine_key(), "layers": [repr(layer) for layer in layers_of(model)],
            "input_shape": list(input_shape), "batch_size": batch_size, "dtype": dtype, "npconv": __version__,
            "method": METHOD}


def _cached(path, key):
    """The plan cached in ``path`` for ``key``, or None (no file, another key, or a damaged file)."""
    if not os.path.exists(path):
        return None
    try:
        obj = read_json(path, "plan cache file", PlanError)
        return Plan.from_dict(obj.get("plan"), path, "cached") if obj.get("key") == key else None
    except (PlanError, AttributeError):
        return None


@contextlib.contextmanager
def _measuring_alone(path):
    """Hold an exclusive lock beside ``path`` while measuring: processes that start together (a sweep's
    workers) then measure once and share the plan, instead of each remembering its own. Where no lock can
    be had (no ``fcntl``, a read-only cache) the block runs without."""
    try:
        import fcntl

        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # waits while another process measures
        yield
    finally:
        os.close(fd)  # releases the lock


def plan_for(model, input_shape, batch_size, *, folder=None, measure_fn=measure, log=None):
    """The plan for ``model`` on this machine: the one measured before (cached), else measured now and cached.

    A cache file that cannot be read is measured again and replaced; one that cannot be written is
    skipped (the run goes on with the plan it measured). Once remembered, a plan is the machine's for
    that model and batch size: the same seed then gives the same numbers run after run (delete the
    cache file to measure again).
    """
    folder = cache_folder() if folder is None else folder
    key = plan_key(model, input_shape, batch_size)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    path = os.path.join(folder, f"{digest}.json")
    plan = _cached(path, key)
    if plan is not None:
        return plan
    with _measuring_alone(path):
        plan = _cached(path, key)  # measured by another process while this one waited
        if plan is not None:
            return plan
        meter = CoreMeter()
        started = time.perf_counter()
        try:
            plan, timings = measure_fn(model, input_shape, batch_size)
        except (ValueError, RuntimeError, FloatingPointError, MemoryError):
            # Measuring must never be why a run fails: the run itself reports what is wrong with its model.
            return BUILT_IN
        busy = meter.others_busy()
        if log is not None:
            log(f"plan measured in {time.perf_counter() - started:.1f} s: {plan.describe()}")
        with contextlib.suppress(OSError):
            os.makedirs(folder, exist_ok=True)
            write_json(path, {"key": key, "plan": plan.choices(), "others_busy_cores": round(busy, 2),
                              "timings": [{"plan": p.choices(), "cpu_seconds": s} for p, s in timings]})
    return plan


__all__ = ["STEPS", "candidates", "chunk_step", "computes", "convolutions", "measure", "piece_pass", "plan_for"]
