"""How long will a sweep take? Time a few batches, extrapolate, schedule on the workers.

For each distinct *cost setting* of the pending runs (the settings marked
``cost`` in :mod:`npconv.train.settings`: model, batch size, dropout, optimizer,
dtype, data -- what a step's time depends on), a real
model takes one warm-up step and then :data:`TIMED_STEPS` timed training steps
on real images, with one BLAS thread as the runs will have, and one evaluation
batch of 1000 test images is timed. A run then costs about::

    epochs * (ceil(train_size / batch_size) * step + (test_size + val_size) / 1000 * eval_batch) + overhead

The runs are laid out on the workers longest first, each on the worker that
frees up first; the estimate is when the last one ends. It is this machine's
speed: a Dask cluster's machines may be faster or slower.
"""

import math
import time

import numpy as np

from .. import data, engine, nn
from ..models import build_model
from ..train.run import make_optimizer
from ..train.settings import COST

#: Training steps timed per cost setting (after one warm-up step).
TIMED_STEPS = 3
#: Seconds per run beyond its epochs: starting, loading the data, saving the model and the plot.
RUN_OVERHEAD_SECONDS = 1.0


def _cost_setting(config):
    """The settings that change a step's time (:data:`~npconv.train.settings.COST`): timed once per value."""
    return tuple(getattr(config, name) for name in COST)


def time_steps(config, dataset, steps=TIMED_STEPS):
    """Seconds per training step and per evaluation batch of 1000 images: ``(step_s, eval_s)``."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    n = min(len(dataset.train_labels), config.batch_size * (steps + 1))
    dtype = np.dtype(config.dtype)
    x = data.to_float(dataset.train_images[:n], 0.5, 0.25, dtype)
    y = dataset.train_labels[:n]
    model = build_model(config.model, config.dropout, config.dropout_at, layers=config.model_layers,
                        num_classes=len(dataset.classes), rng=rng, dtype=dtype)
    loss_fn = nn.SoftmaxCrossEntropyLoss()
    optimizer = make_optimizer(config, model.parameters())
    threads_before = engine.get_num_threads()
    engine.set_num_threads(1)  # as a sweep's runs train: one thread each (npconv.experiments.executors)
    try:
        model = engine.compile(model, config.engine)
        # A setting that will diverge may overflow here already; only its time matters.
        with threadpool_limits(limits=1, user_api="blas"), \
                np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            started = None
            for step in range(steps + 1):
                if step == 1:  # the first step warms caches up and is not counted
                    started = time.perf_counter()
                lo = (step * config.batch_size) % max(n - config.batch_size + 1, 1)
                xb, yb = x[lo:lo + config.batch_size], y[lo:lo + config.batch_size]
                optimizer.zero_grad()
                loss_fn(model(xb), yb)
                model.backward(loss_fn.backward(), input_grad=False)
                optimizer.step()
            step_s = (time.perf_counter() - started) / steps
            model.eval()
            x_eval = data.to_float(dataset.test_images[:1000], 0.5, 0.25, dtype)
            started = time.perf_counter()
            with nn.no_grad():  # as evaluation runs
                model(x_eval)
            eval_s = (time.perf_counter() - started) * 1000 / len(x_eval)
    finally:
        engine.set_num_threads(threads_before)
    return step_s, eval_s


def run_seconds(run, step_s, eval_s):
    """Estimated seconds of one :class:`~npconv.experiments.sweep.Run` from its setting's step and eval times.

    A run cut off midway counts only the epochs it has left (it resumes after ``run.epochs_done``).
    """
    config = run.config
    steps = math.ceil(run.train_size / config.batch_size)
    evaluated = run.test_size + run.val_size
    epochs = config.epochs - getattr(run, "epochs_done", 0)
    return epochs * (steps * step_s + evaluated / 1000 * eval_s) + RUN_OVERHEAD_SECONDS


def makespan(durations, slots):
    """Wall time of running ``durations`` on ``slots`` workers, longest first, each on the first free worker."""
    free = [0.0] * max(1, slots)
    for d in sorted(durations, reverse=True):
        i = free.index(min(free))
        free[i] += d
    return max(free)


def estimate_sweep(runs, datasets, slots):
    """``(seconds, explanation)``: the estimated wall time of training ``runs`` on ``slots`` workers."""
    timings = {}
    for run in runs:
        setting = _cost_setting(run.config)
        if setting not in timings:
            timings[setting] = time_steps(run.config, datasets[(run.config.dataset, run.config.data_dir)])
    durations = [run_seconds(run, *timings[_cost_setting(run.config)]) for run in runs]
    settings = "the one model setting" if len(timings) == 1 else f"each of {len(timings)} model settings"
    what = f"from timing {TIMED_STEPS} batches of {settings} on this machine"
    return makespan(durations, slots), what
