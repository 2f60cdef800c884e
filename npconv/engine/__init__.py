"""The engine: runs a model built from :mod:`npconv.nn` layers fast, with the same math.

:mod:`npconv.nn` is the textbook: each layer is its formula in NCHW, forward and
backward. The engine computes the same numbers (up to rounding) the fast way,
and the layers know nothing of it::

    net = engine.compile(model)       # model: an nn.Sequential
    loss = loss_fn(net(xb), yb)       # forward with the engine's kernels
    net.backward(loss_fn.backward(), input_grad=False)   # fills the model's .grad
    optimizer.step()                  # the optimizer holds the model's parameters, as ever

``compile(model, "reference")`` gives the model itself: the textbook layers
alone, in a plain loop (``npconv train --engine reference``).

In dependency order:

==================  ==========================================================
``layout.py``       batch-last memory: ``(C, H, W, N)`` seen as ``(N, C, H, W)``
``products.py``     long, thin matrix products in blocks; row sums as products
``kernels.py``      a kernel per layer: the layer's math the engine's way
``conv.py``         the convolution kernel (im2col in row blocks, the bias in the product)
``batchnorm.py``    the batch-norm kernel, in steps that chunks of a batch can share
``chain.py``        the kernels of a network in order (ReLU after MaxPool2d)
``plan.py``         ``Plan``: the block sizes and chunks a run computes with, fixed for the run
``planner.py``      a plan chosen by timing candidates on this machine, remembered per machine and model
``tuning.py``       ``ThreadTuner``: the thread count chosen by timing; ``CoreMeter``: the free cores
``memory.py``       freed memory kept for the next arrays (glibc's thresholds)
``stages.py``       a pass as stages: segments between batch norms, and where the chunks meet
``processes.py``    helper processes that compute chunks where the interpreter lock holds threads back
``parallel.py``     ``DataParallel``: a batch in fixed chunks, on one or more threads or processes
==================  ==========================================================

Why each constant has its value: ``docs/performance.md``.
"""

from .. import nn
from .chain import Chain, kernel_for, layers_of
from .parallel import DataParallel, get_num_threads, set_num_threads, set_processes
from .plan import BUILT_IN, Plan, PlanError
from .planner import plan_for

#: The engines a model can run on: the textbook layers alone, or the engine's kernels, chunks and threads.
ENGINES = ("fast", "reference")


def compile(model, engine="fast", plan=None):
    """``model`` (an :class:`~npconv.nn.Sequential`) ready to run on ``engine``.

    ``"fast"``: a :class:`DataParallel` -- the engine's kernels, in chunks, on as
    many threads as pay; ``"reference"``: the model itself. Either has the model's
    interface (``net(x)``, ``net.backward(dy, input_grad)``, ``train()``, ``eval()``,
    ``training``, ``parameters()``), computes the model's math and fills its
    parameters' ``.grad``; the model stays the one to save or inspect. ``plan``
    (:class:`~npconv.engine.plan.Plan`): the fast engine's block sizes and chunks
    (default: the built-in ones; :func:`~npconv.engine.planner.plan_for` measures them here).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "reference":
        return model
    return DataParallel(model, plan)


def layer_outputs(model, x):
    """Each layer's output for ``x``, layer by layer in definition order, computed by the engine's kernels
    under ``no_grad()`` (nothing kept): a list, one array per layer of ``model`` (nested Sequentials opened)."""
    outputs = []
    with nn.no_grad():
        for layer in layers_of(model):
            x = kernel_for(layer).forward(x)
            outputs.append(x)
    return outputs


__all__ = ["BUILT_IN", "Chain", "DataParallel", "ENGINES", "Plan", "PlanError", "compile", "get_num_threads",
           "kernel_for", "layer_outputs",
           "plan_for", "set_num_threads", "set_processes"]
