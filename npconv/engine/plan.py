"""The plan: how the engine runs one model on one machine, chosen by timing candidates there and remembered.

FFTW's planner, cuDNN's benchmark mode and ATLAS choose their kernels by
measuring on the machine they run on, because the fastest choice depends on
its caches and on its BLAS. The engine does the same for its own choices:

==================  ==========================================================
``blocked_products``  whether long, thin products go to BLAS in blocks
                      (:mod:`npconv.engine.products`), and ``block_macs``, the
                      multiply-adds of one block
``whole_bytes``       the ``cols`` bytes up to which a convolution is one product,
``block_bytes``       and the bytes of one block of output rows above it
                      (:mod:`npconv.engine.conv`)
``chunk``, ``piece``  images per chunk of a training batch, per piece of an
                      inference batch (:mod:`npconv.engine.parallel`)
==================  ==========================================================

Each of these changes the order of some sums, so the last bits of a run: a
plan is chosen once, **fixed for the whole run**, recorded in its folder
(``plan.json``) and reused by ``--resume``; a user can pin one (``--plan
FILE``) for runs that must give the same bits on one machine. The choices that
change no number -- how many threads run the chunks -- are made at every step
by :class:`~npconv.engine.tuning.ThreadTuner` instead.

:func:`measure` times each candidate on one chunk's training step (forward and
backward, one thread: what each thread runs), in interleaved rounds, and keeps
the fastest median; :func:`plan_for` remembers the choice in the user's cache
folder, keyed by the CPU, the BLAS, the model's layers, the input, the batch
size and npconv's version, so that it costs a second or two once per machine
and model, and nothing afterwards.

:data:`BUILT_IN` is the plan of npconv 0.2 (constants measured on one machine,
docs/performance.md): a model compiled without a plan runs with it, so the
library's numbers do not depend on a timing unless asked to.
"""

import contextlib
import contextvars
import copy
import hashlib
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, fields, replace

import numpy as np

from .. import __version__
from .. import backend as B
from ..errors import NpconvError
from ..io import read_json, write_json


class PlanError(NpconvError):
    """A plan file that cannot be used (missing, malformed, or with a value out of range)."""


def blas_has_small_matrix_kernels():
    """Whether NumPy's BLAS is OpenBLAS on a CPU with AVX-512, where it runs its small-matrix kernels.

    The built-in plan's rule for ``blocked_products`` (with OpenBLAS's AVX2 kernels blocks cost more
    than one product, docs/performance.md); a measured plan times both instead.
    """
    try:
        config = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]["name"].lower()
        simd = config["SIMD Extensions"]["found"]
    except (AttributeError, KeyError, TypeError, ValueError):  # another NumPy build or version
        return False
    forced = os.environ.get("OPENBLAS_CORETYPE", "").lower()  # OpenBLAS told to use other kernels
    if forced and forced not in ("skylakex", "cooperlake", "sapphirerapids"):
        return False
    return "openblas" in blas and any(name in simd for name in ("X86_V4", "AVX512_SKX"))


@dataclass(frozen=True)
class Plan:
    """The engine's choices for one model on one machine (module docstring); ``origin`` says where they came
    from: ``built-in``, ``measured``, ``cached`` (measured earlier on this machine), ``recorded`` (a run's
    ``plan.json``) or ``file`` (pinned by the user)."""

    blocked_products: bool
    block_macs: int = 1 << 18
    whole_bytes: int = 4 << 20
    block_bytes: int = 1 << 20
    chunk: int = 50
    piece: int = 100
    origin: str = "built-in"

    #: The fields that decide the numbers (all but ``origin``).
    CHOICES = ("blocked_products", "block_macs", "whole_bytes", "block_bytes", "chunk", "piece")

    def choices(self):
        """The fields that decide the numbers, as a dict (what ``plan.json`` records)."""
        return {name: getattr(self, name) for name in self.CHOICES}

    def same_numbers(self, other):
        """Whether ``other`` makes the same choices (wherever it came from)."""
        return self.choices() == other.choices()

    def describe(self):
        """One line, e.g. ``measured: products in blocks of 262144 multiply-adds, ...``."""
        products = (f"products in blocks of {self.block_macs} multiply-adds" if self.blocked_products
                    else "products whole")
        return (f"{self.origin}: {products}, convolutions whole up to {self.whole_bytes >> 10} KB of cols, "
                f"else in row blocks of {self.block_bytes >> 10} KB; chunks of {self.chunk} images "
                f"(inference {self.piece})")

    @classmethod
    def from_dict(cls, obj, where, origin):
        """The plan an object of ``plan.json`` (or a pinned file) describes; :class:`PlanError` naming ``where``."""
        if not isinstance(obj, dict):
            raise PlanError(f"{where}: a plan must be a JSON object, got {type(obj).__name__}")
        values = {}
        for f in fields(cls):
            if f.name == "origin":
                continue
            if f.name not in obj:
                raise PlanError(f"{where}: the plan has no '{f.name}'")
            value = obj[f.name]
            if f.name == "blocked_products":
                if not isinstance(value, bool):
                    raise PlanError(f"{where}: 'blocked_products' must be true or false, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PlanError(f"{where}: '{f.name}' must be an integer >= 1, got {value!r}")
            values[f.name] = value
        return cls(**values, origin=origin)

    @classmethod
    def load(cls, path, origin="file"):
        """A plan from a JSON file (``plan.json`` of a run, or one a user pins)."""
        if not os.path.isfile(path):
            raise PlanError(f"{path}: no such plan file")
        obj = read_json(path, "plan file", PlanError)
        return cls.from_dict(obj.get("plan", obj) if isinstance(obj, dict) else obj, path, origin)


#: npconv 0.2's plan: the constants of docs/performance.md (measured on one AMD Zen 4).
BUILT_IN = Plan(blocked_products=blas_has_small_matrix_kernels())

_current = contextvars.ContextVar("npconv_engine_plan", default=None)


def current():
    """The plan of the model running in this thread (worker threads see their caller's), or None: the
    kernels then use their modules' constants, which are :data:`BUILT_IN`'s."""
    return _current.get()


@contextlib.contextmanager
def using(plan):
    """Run the block with ``plan`` (None: the modules' constants)."""
    token = _current.set(plan)
    try:
        yield
    finally:
        _current.reset(token)


# --- measuring -----------------------------------------------------------------

#: Multiply-adds per block tried for blocked products (2**18 is the built-in one).
BLOCK_MACS_CANDIDATES = (1 << 17, 1 << 18, 1 << 19)

#: Bytes per block of output rows tried (1 MB is the built-in one).
BLOCK_BYTES_CANDIDATES = (512 << 10, 1 << 20, 2 << 20)


def candidates(base=BUILT_IN):
    """The plans :func:`measure` times, built-in first: products whole or in blocks of each size, then row
    blocks of each size (the chunk sizes stay: they decide how a batch norm pools its statistics)."""
    plans = [replace(base, blocked_products=False)]
    plans += [replace(base, blocked_products=True, block_macs=m) for m in BLOCK_MACS_CANDIDATES]
    plans += [replace(base, block_bytes=b) for b in BLOCK_BYTES_CANDIDATES]
    unique = [base]
    for plan in plans:
        if not any(plan.same_numbers(p) for p in unique):
            unique.append(plan)
    return unique


def chunk_step(model, input_shape, images):
    """A function that runs one training step (forward and backward, no optimizer) of a copy of ``model``
    on ``images`` random inputs of ``input_shape`` under the plan it is given, on this thread."""
    from .chain import Chain, kernel_for, layers_of
    from .parallel import one_blas_thread

    twin = copy.deepcopy(model)  # its running statistics and gradients move; the run's model's do not
    twin.train()
    chain = Chain(kernel_for(layer) for layer in layers_of(twin))
    dtype = next((p.data.dtype for p in twin.parameters()), np.dtype(np.float32))
    x = B.xp.asarray(np.random.default_rng(0).standard_normal((images, *input_shape)).astype(dtype))
    dy = [None]

    def step(plan):
        with using(plan), one_blas_thread():
            y = chain.forward(x)
            if dy[0] is None:
                dy[0] = B.xp.full(y.shape, 1 / y.size, dtype=y.dtype)
            chain.backward(dy[0], input_grad=False)
    return step


def measure(model, input_shape, batch_size, *, rounds=5, time_step=None, base=BUILT_IN):
    """The fastest of :func:`candidates` for ``model`` on batches of ``batch_size`` inputs of ``input_shape``.

    Every candidate runs one chunk's training step once to warm up, then ``rounds`` times, the candidates
    taking turns (so a slow moment of the machine falls on all of them); the median counts. ``time_step(plan)``
    (default: timing :func:`chunk_step`) returns one step's seconds -- tests give fake timings. A candidate
    must beat the built-in plan by 2 % to be chosen: a tie keeps npconv's usual numbers.
    """
    plans = candidates(base)
    if time_step is None:
        step = chunk_step(model, input_shape, min(base.chunk, batch_size))

        def time_step(plan):
            started = time.perf_counter()
            step(plan)
            return time.perf_counter() - started
        for plan in plans:
            step(plan)
    times = {i: [] for i in range(len(plans))}
    for _ in range(rounds):
        for i, plan in enumerate(plans):
            times[i].append(time_step(plan))
    medians = {i: statistics.median(t) for i, t in times.items()}
    best = min(medians, key=lambda i: medians[i] * (1 if i == 0 else 1.02))
    return replace(plans[best], origin="measured"), [(plans[i], medians[i]) for i in range(len(plans))]


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
    from .tuning import usable_cores
    return {"cpu": cpu, "cores": usable_cores(), "blas": blas, "numpy": np.__version__}


def plan_key(model, input_shape, batch_size):
    """The cache key of a plan: the machine, the model's layers, the input, the batch size, npconv's version."""
    from .chain import layers_of
    dtype = next((str(p.data.dtype) for p in model.parameters()), "float32")
    return {"machine": machine_key(), "layers": [repr(layer) for layer in layers_of(model)],
            "input_shape": list(input_shape), "batch_size": batch_size, "dtype": dtype, "npconv": __version__}


#: A plan measured while other programs kept more cores than this busy is used, but not remembered: its
#: timings may say more about the other programs than about the candidates.
BUSY_CORES = 0.5


def others_busy(meter):
    """The cores other programs kept busy since ``meter`` was made (a seam for tests)."""
    return meter.others_busy()


def plan_for(model, input_shape, batch_size, *, folder=None, measure_fn=measure, log=None):
    """The plan for ``model`` on this machine: the one measured before (cached), else measured now and cached.

    A cache file that cannot be read is measured again and replaced; one that cannot be written is
    skipped (the run goes on with the plan it measured), and so is a plan measured on a busy machine
    (:data:`BUSY_CORES`): the next run measures again.
    """
    folder = cache_folder() if folder is None else folder
    key = plan_key(model, input_shape, batch_size)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    path = os.path.join(folder, f"{digest}.json")
    if os.path.exists(path):
        try:
            obj = read_json(path, "plan cache file", PlanError)
            if obj.get("key") == key:
                return Plan.from_dict(obj.get("plan"), path, "cached")
        except (PlanError, AttributeError):
            pass  # measured again below
    from .tuning import CoreMeter
    meter = CoreMeter()
    started = time.perf_counter()
    plan, timings = measure_fn(model, input_shape, batch_size)
    busy = others_busy(meter)
    if log is not None:
        log(f"plan measured in {time.perf_counter() - started:.1f} s: {plan.describe()}")
    if busy > BUSY_CORES:
        return replace(plan, origin="measured on a busy machine")
    with contextlib.suppress(OSError):
        os.makedirs(folder, exist_ok=True)
        write_json(path, {"key": key, "plan": plan.choices(),
                          "timings": [{"plan": p.choices(), "seconds": s} for p, s in timings]})
    return plan


def record(plan):
    """What a run folder's ``plan.json`` holds: the choices and where they came from."""
    return {"plan": plan.choices(), "origin": plan.origin}


__all__ = ["BUILT_IN", "Plan", "PlanError", "candidates", "current", "measure", "plan_for", "record",
           "using"]
