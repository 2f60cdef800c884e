"""Sequential: a chain of layers."""

from .activation import ReLU
from .module import Module
from .pool import MaxPool2d


def execution_order(layers):
    """The order to run ``layers`` in: as given, except that ``ReLU, MaxPool2d`` runs as ``MaxPool2d, ReLU``.

    The two commute -- ``max(relu(a), relu(b)) == relu(max(a, b))`` because ReLU
    never changes the order of two values -- and so do their gradients: where a
    window's maximum is positive both route ``dy`` to its first maximum, and
    where it is not both give zero. Pooling first lets ReLU work on a quarter
    of the values (for 2x2 pooling). The result is the same to the last bit.
    """
    order = list(range(len(layers)))
    for i in range(len(layers) - 1):
        if isinstance(layers[order[i]], ReLU) and type(layers[order[i + 1]]) is MaxPool2d:
            order[i], order[i + 1] = order[i + 1], order[i]
    return order


class Sequential(Module):
    """Apply layers in order; backward walks them in reverse (the chain rule).

    ``Sequential(a, b, c)(x) == c(b(a(x)))`` and
    ``backward(dy) == a.backward(b.backward(c.backward(dy)))``.

    Parameter names are the layer index and the parameter's name, as in
    PyTorch: ``"0.weight"``, ``"0.bias"``, ``"3.weight"`` ...

    A ReLU followed by a MaxPool2d runs pool-first (:func:`execution_order`):
    that changes how, never what, is computed.
    """

    def __init__(self, *layers):
        self.layers = list(layers)

    def children(self):
        for i, layer in enumerate(self.layers):
            yield str(i), layer

    def forward(self, x):
        self._order = execution_order(self.layers)
        for i in self._order:
            x = self.layers[i](x)
        return x

    def backward(self, dy, input_grad=True):
        """Backpropagate ``dy`` through every layer; return ``dx`` of the first.

        ``input_grad=False`` says the network's input needs no gradient (it is
        data): backpropagation stops at the first layer with parameters, which
        skips computing its own ``dx`` (for a Conv2d, a matrix product and the
        col2im), and None is returned.
        """
        order = getattr(self, "_order", None)
        if order is None:
            raise RuntimeError("Sequential.backward() called before forward()")
        if input_grad:
            for i in reversed(order):
                dy = self.layers[i].backward(dy)
            return dy
        first = next((k for k, i in enumerate(order) if self.layers[i].parameters()), None)
        if first is not None:
            for i in reversed(order[first + 1 :]):
                dy = self.layers[i].backward(dy)
            self.layers[order[first]].backward(dy, input_grad=False)
        return None

    def __getitem__(self, i):
        return self.layers[i]

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __repr__(self):
        lines = [f"  ({i}): {layer!r}" for i, layer in enumerate(self.layers)]
        return "Sequential(\n" + "\n".join(lines) + "\n)"
