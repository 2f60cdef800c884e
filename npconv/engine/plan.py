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

:mod:`npconv.engine.planner` chooses a plan by timing candidates on this
machine and remembers it per machine and model.

:data:`BUILT_IN` is the plan of npconv 0.2 (constants measured on one machine,
docs/performance.md): a model compiled without a plan runs with it, so the
library's numbers do not depend on a timing unless asked to.
"""

import contextlib
import contextvars
import os
from dataclasses import dataclass, fields

import numpy as np

from ..errors import NpconvError
from ..io import read_json


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


#: The built-in plan: fixed constants, measured on one machine (docs/performance.md); used where nothing is measured.
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


def record(plan):
    """What a run folder's ``plan.json`` holds: the choices and where they came from."""
    return {"plan": plan.choices(), "origin": plan.origin}


__all__ = ["BUILT_IN", "Plan", "PlanError", "current", "record", "using"]
