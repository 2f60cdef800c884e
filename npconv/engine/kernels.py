"""Kernels: the engine's version of each layer -- the same math, computed with batch-last memory.

A kernel is made from one :mod:`npconv.nn` layer (:func:`kernel_for`). It reads
that layer's settings, parameters and buffers, fills its parameters' ``.grad``
and moves its running statistics; it keeps its own cache, so that several
kernels of one layer (one per chunk of a batch, :mod:`npconv.engine.parallel`)
can run at once. The layer itself is never changed and knows nothing of its kernels.

Images inside the engine are stored batch-last (:mod:`npconv.engine.layout`):
a convolution kernel returns its output that way, element-wise kernels and
pooling keep the layout, and the next convolution takes it as it is. Only memory
order changes, never a value's place in ``(N, C, H, W)``.

The textbook layer and its kernel compute the same numbers up to rounding
(``tests/engine/`` checks every layer); the kernels of :mod:`npconv.engine.conv`
and :mod:`npconv.engine.batchnorm` say what they do differently.
"""

import copy

from .. import backend as B
from .. import nn
from .layout import batch_first, is_batch_last, reshape_batch

_NOTHING_KEPT = object()  # what a forward under no_grad() leaves for backward


class Kernel:
    """Base of the kernels: the layer it computes, its parameters (shared with the layer) and its own cache.

    ``forward(x) -> y`` and ``backward(dy[, input_grad]) -> dx`` follow the layer
    contract of :mod:`npconv.nn.module`.
    """

    def __init__(self, layer):
        self.layer = layer
        self._saved = None
        for name, value in vars(layer).items():  # the layer's own Parameter objects: backward fills their .grad
            if isinstance(value, nn.Parameter):
                setattr(self, name, value)

    def parameters(self):
        """The parameters this kernel fills the gradients of, in the layer's order."""
        return [value for value in vars(self).values() if isinstance(value, nn.Parameter)]

    def replicate(self):
        """A kernel of the same layer with its own cache and its own gradients (the weight arrays are shared)."""
        twin = copy.copy(self)
        for name, value in vars(self).items():
            if isinstance(value, nn.Parameter):
                setattr(twin, name, nn.Parameter(value.data))  # same data array, fresh gradient
        twin._saved = None
        return twin

    def _save(self, *tensors):
        self._saved = tensors if nn.grad_enabled() else _NOTHING_KEPT

    def _saved_tensors(self):
        saved = self._saved
        name = type(self.layer).__name__
        if saved is None:
            raise RuntimeError(f"{name}.backward() called before forward()")
        if saved is _NOTHING_KEPT:
            raise RuntimeError(f"{name}.backward() after a forward under no_grad(), which keeps nothing")
        return saved


class LayerKernel(Kernel):
    """A layer whose own forward and backward serve the engine as they are (ReLU, MaxPool2d, Dropout, ...).

    They run on a shallow copy of the layer (sharing its parameters, settings
    and random generator), so that each kernel keeps its own cache.
    """

    def __init__(self, layer):
        super().__init__(layer)
        self.own = copy.copy(layer)
        self.own._saved = None

    def replicate(self):
        twin = super().replicate()
        twin.own = copy.copy(self.own)
        for name, value in vars(self.own).items():
            if isinstance(value, nn.Parameter):
                setattr(twin.own, name, getattr(twin, name))
        twin.own._saved = None
        return twin

    def forward(self, x):
        for name, value in vars(self.layer).items():  # the layer's settings as they are now (mode, p, ...)
            if name != "_saved" and not isinstance(value, nn.Parameter):
                setattr(self.own, name, value)
        return self.own.forward(x)

    def backward(self, dy, input_grad=True):
        return self.own.backward(dy) if input_grad else self.own.backward(dy, input_grad=False)


class LinearKernel(LayerKernel):
    """:class:`~npconv.nn.Linear`, ``y = x W^T + b``, by the layer's own code; but ``dx`` comes back in the layout
    ``x`` came in.

    When ``x`` is stored batch-last (a flattened convolution output), ``dx`` is
    computed as ``(W^T dy^T)^T`` -- the same numbers -- so that it is batch-last too
    and the kernels below need no copy.
    """

    def backward(self, dy, input_grad=True):
        (x,) = self.own._saved_tensors()
        if not (input_grad and is_batch_last(x)):
            return super().backward(dy, input_grad)
        self.own.backward(dy, input_grad=False)  # the layer's dW and db
        return (self.weight.data.T @ dy.T).T


class FlattenKernel(Kernel):
    """:class:`~npconv.nn.Flatten`, keeping the layout: a batch-last (N, C, H, W) flattens to a batch-last view."""

    def forward(self, x):
        self._save(x.shape)
        return reshape_batch(x, (-1,))

    def backward(self, dy, input_grad=True):
        (shape,) = self._saved_tensors()
        return reshape_batch(dy, shape[1:])


def _zeros(shape, dtype, stored_batch_last):
    """Zeros of ``shape`` (N, C, H, W), stored batch-last or as NCHW."""
    if stored_batch_last:
        n, *rest = shape
        return batch_first(B.xp.zeros((*rest, n), dtype=dtype))
    return B.xp.zeros(shape, dtype=dtype)


class AvgPool2dKernel(Kernel):
    """:class:`~npconv.nn.AvgPool2d`, keeping the layout of its input (and giving ``dx`` that layout)."""

    def forward(self, x):
        x = B.xp.asarray(x)
        if x.dtype.kind != "f":  # integer pixels are averaged in floats
            x = x.astype(B.resolve_dtype(None))
        n, c, h, w = x.shape
        oh, ow = self.layer._output_size(h, w)
        (kh, kw), (ph, pw) = self.layer.kernel_size, self.layer.padding
        stored_batch_last = is_batch_last(x)
        padded = x
        if ph or pw:
            padded = _zeros((n, c, h + 2 * ph, w + 2 * pw), x.dtype, stored_batch_last)
            padded[:, :, ph : ph + h, pw : pw + w] = x
        first, *rest = self.layer._window_entries(padded, oh, ow)
        y = first.copy(order="K")  # "K": keep x's memory layout
        for entry in rest:
            y += entry
        y *= x.dtype.type(1 / (kh * kw))
        self._save(x.shape, stored_batch_last)
        return y

    def backward(self, dy, input_grad=True):
        (n, c, h, w), stored_batch_last = self._saved_tensors()
        _, _, oh, ow = dy.shape
        (kh, kw), (ph, pw) = self.layer.kernel_size, self.layer.padding
        share = dy * dy.dtype.type(1 / (kh * kw))
        dx_padded = _zeros((n, c, h + 2 * ph, w + 2 * pw), dy.dtype, stored_batch_last)
        for entry in self.layer._window_entries(dx_padded, oh, ow):
            entry += share
        return dx_padded[:, :, ph : ph + h, pw : pw + w]
