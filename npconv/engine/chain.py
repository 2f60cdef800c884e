"""A network as the engine runs it: one kernel per layer, in order, with ReLU after MaxPool2d.

:func:`kernel_for` picks each layer's kernel (:mod:`npconv.engine.kernels`);
:class:`Chain` runs a list of kernels forward and backward as
:class:`npconv.nn.Sequential` runs its layers, with one change of order:
``ReLU, MaxPool2d`` runs as ``MaxPool2d, ReLU`` (:func:`execution_order`).
"""

from .. import nn
from .batchnorm import BatchNormKernel
from .conv import Conv2dKernel
from .kernels import AvgPool2dKernel, FlattenKernel, LayerKernel, LinearKernel

#: The kernel of each layer type; any other layer runs its own forward and backward (:class:`LayerKernel`).
KERNELS = {
    nn.Conv2d: Conv2dKernel,
    nn.Linear: LinearKernel,
    nn.BatchNorm1d: BatchNormKernel,
    nn.BatchNorm2d: BatchNormKernel,
    nn.AvgPool2d: AvgPool2dKernel,
    nn.Flatten: FlattenKernel,
}


def kernel_for(layer):
    """The engine's kernel for one (non-container) layer."""
    return KERNELS.get(type(layer), LayerKernel)(layer)


def layers_of(model):
    """Every layer of ``model`` (a Sequential), nested Sequentials opened, in definition order."""
    for layer in model.layers:
        if isinstance(layer, nn.Sequential):
            yield from layers_of(layer)
        else:
            yield layer


def execution_order(kernels):
    """The order to run ``kernels`` in: as given, except that ``ReLU, MaxPool2d`` runs as ``MaxPool2d, ReLU``.

    The two commute -- ``max(relu(a), relu(b)) == relu(max(a, b))`` because ReLU
    never changes the order of two values -- and so do their gradients: where a
    window's maximum is positive both route ``dy`` to its first maximum, and
    where it is not both give zero. Pooling first lets ReLU work on a quarter
    of the values (for 2x2 pooling). The result is the same to the last bit.
    """
    order = list(range(len(kernels)))
    for i in range(len(kernels) - 1):
        if type(kernels[order[i]].layer) is nn.ReLU and type(kernels[order[i + 1]].layer) is nn.MaxPool2d:
            order[i], order[i + 1] = order[i + 1], order[i]
    return order


class Chain:
    """Kernels run one after another: forward in :func:`execution_order`, backward in reverse.

    ``backward(dy, input_grad=False)`` stops at the first kernel with parameters
    and skips its ``dx`` (the network's input is data), as :meth:`npconv.nn.Sequential.backward`.
    """

    def __init__(self, kernels):
        self.kernels = list(kernels)
        self.order = execution_order(self.kernels)
        self._ran = False

    def forward(self, x):
        for i in self.order:
            x = self.kernels[i].forward(x)
        self._ran = True
        return x

    def backward(self, dy, input_grad=True):
        if not self._ran:
            raise RuntimeError("Sequential.backward() called before forward()")
        if input_grad:
            for i in reversed(self.order):
                dy = self.kernels[i].backward(dy)
            return dy
        first = next((k for k, i in enumerate(self.order) if self.kernels[i].parameters()), None)
        if first is not None:
            for i in reversed(self.order[first + 1 :]):
                dy = self.kernels[i].backward(dy)
            self.kernels[self.order[first]].backward(dy, input_grad=False)
        return None

    def parameters(self):
        return [p for kernel in self.kernels for p in kernel.parameters()]

    def replicate(self):
        """A chain of the same layers with its own caches and gradients (the weight arrays are shared)."""
        return Chain([kernel.replicate() for kernel in self.kernels])
