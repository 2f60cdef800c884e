"""A pass over a batch cut into chunks, as stages: what every chunk computes, and where the chunks meet.

A network is cut at its batch normalizations (training mode) into **segments**
(:func:`cut_at_batch_norms`); each chunk runs a segment on its own, and at a batch norm the
chunks **meet**: the whole batch's statistics are pooled from every chunk's
moments, in chunk order, before any chunk normalizes (docs/math.md, sections 18
and 20). A pass is then a list of :class:`Stage`, one per segment -- forward
(:func:`forward_stages`) or backward (:func:`backward_stages`) -- and whoever runs
it (chunk after chunk, :func:`run_alone`; on threads or in helper processes,
:mod:`npconv.engine.parallel` and :mod:`npconv.engine.processes`) computes every
chunk the same way, so the numbers never depend on where a chunk ran.
"""

import functools
from dataclasses import dataclass
from typing import Callable

from .. import nn
from .chain import Chain

#: Layers that make a network worth cutting into chunks: without one, it is a few matrix
#: products, cheaper on the whole batch (docs/performance.md, "chunks").
WORTH_CUTTING = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


def chain_per_chunk(kernels, grad):
    """Whether every chunk needs a chain of its own: a training pass keeps each chunk's caches for backward, and a
    batch normalization in training mode keeps a chunk's deviations between its steps. Otherwise (inference) one
    chain can run chunk after chunk."""
    return grad or any(batch_statistics(kernel.layer) for kernel in kernels)


def batch_statistics(layer):
    """Whether ``layer`` uses the statistics of the whole batch: a batch normalization in training mode.
    (In evaluation mode it uses its running statistics, the same for every sample.)"""
    return isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)) and layer.training


@dataclass
class Stage:
    """One stage of a batch's computation, the same for every chunk.

    ``task(i, value, shared) -> (value, note)`` takes chunk i's value through the stage
    (``shared``: what the previous stage's meeting gave, None before the first) and
    gives what the stage's meeting needs of it (None if it has no meeting);
    ``meet(notes) -> shared``, if not None, runs once every chunk has finished the
    stage, in one thread, with every chunk's note in chunk order (the chunks' meeting
    at a batch norm: a few numbers per channel, while the values stay where they are);
    ``threaded`` False: the stage's chunks run one after another in the calling thread.
    """

    task: Callable
    meet: Callable | None
    threaded: bool


def run_alone(stages, values):
    """Take every chunk's value through ``stages``, chunk after chunk, in the calling thread; return the values."""
    shared, values = None, list(values)
    for stage in stages:
        shared, values = alone(stage, values, shared)
    return values


def alone(stage, values, shared):
    """One stage in the calling thread, chunk after chunk, and its meeting: ``(shared, values)`` after it."""
    values, notes = zip(*(stage.task(i, value, shared) for i, value in enumerate(values)))
    return meeting(stage, notes, shared), list(values)


def meeting(stage, notes, shared):
    """What the stage's meeting gives the next stage (``shared`` unchanged where it has none)."""
    return stage.meet(list(notes)) if stage.meet is not None else shared


@dataclass
class Segment:
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


def cut_at_batch_norms(workers):
    """The network of ``workers`` (one Chain per chunk) cut at its batch normalizations."""
    kernels = [worker.kernels for worker in workers]
    bounds = [i for i, kernel in enumerate(kernels[0]) if batch_statistics(kernel.layer)]
    segments, start = [], 0
    for stop in bounds + [len(kernels[0])]:
        segments.append(Segment([Chain(mine[start:stop]) for mine in kernels],
                                [mine[start - 1] for mine in kernels] if start else None,
                                [mine[stop] for mine in kernels] if stop < len(kernels[0]) else None))
        start = stop + 1
    return segments


def forward_stages(segments, meet):
    """The stages of a forward pass, one per segment (:func:`cut_at_batch_norms`). Chunk i normalizes with the
    statistics the meeting before gave and runs the segment's kernels; where the segment ends at a batch norm, its
    value stays there and its note is the :class:`~npconv.engine.batchnorm.Moments` of its values, which
    ``meet(segment, moments) -> (mean, var)`` pools."""
    def stage(segment):
        def task(i, h, statistics):
            if segment.before is not None:
                h = segment.before[i].normalize(*statistics)
            h = segment.chains[i].forward(h)
            return (h, None) if segment.after is None else (None, segment.after[i].moments(h))

        return Stage(task, functools.partial(meet, segment) if segment.after is not None else None,
                     segment.threaded)

    return [stage(segment) for segment in segments]


def backward_stages(segments, counts, input_grad, meet):
    """The stages of a backward pass, the segments in reverse. Chunk i's value is its ``dy``; where a segment
    starts at a batch norm (training mode), the chunk's note is its share of that layer's ``dbeta`` and
    ``dgamma``, and ``meet(notes) -> sums`` adds them up before any chunk computes the layer's ``dx``
    (``counts[k]``: the values per channel of the whole batch at segment k's batch norm)."""
    def stage(k):
        segment = segments[k]
        needed = input_grad or k > 0  # the gradient of a segment's input (the network's: if asked for)

        def task(i, d, sums):
            if segment.after is not None:
                d = segment.after[i].input_gradient(d, sums, counts[k])
            d = segment.chains[i].backward(d, needed)
            return d, (segment.before[i].gradient_sums(d) if segment.before is not None else None)

        return Stage(task, meet if segment.before is not None else None, segment.threaded)

    return [stage(k) for k in reversed(range(len(segments)))]


def summed(notes):
    """Every chunk's ``(dbeta, dgamma)`` added up, in chunk order."""
    return tuple(sum(parts) for parts in zip(*notes))
