"""Sequential: a chain of layers."""

from .module import Module


class Sequential(Module):
    """Apply layers in order; backward walks them in reverse (the chain rule).

    ``Sequential(a, b, c)(x) == c(b(a(x)))`` and
    ``backward(dy) == a.backward(b.backward(c.backward(dy)))``.

    Parameter names are the layer index and the parameter's name, as in
    PyTorch: ``"0.weight"``, ``"0.bias"``, ``"3.weight"`` ...
    """

    def __init__(self, *layers):
        self.layers = list(layers)

    def children(self):
        for i, layer in enumerate(self.layers):
            yield str(i), layer

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        self._ran = True
        return x

    def backward(self, dy, input_grad=True):
        """Backpropagate ``dy`` through every layer; return ``dx`` of the first.

        ``input_grad=False`` says the network's input needs no gradient (it is
        data): backpropagation stops at the first layer with parameters, which
        skips computing its own ``dx`` (for a Conv2d, a matrix product and the
        col2im), and None is returned.
        """
        if not getattr(self, "_ran", False):
            raise RuntimeError("Sequential.backward() called before forward()")
        if input_grad:
            for layer in reversed(self.layers):
                dy = layer.backward(dy)
            return dy
        first = next((i for i, layer in enumerate(self.layers) if layer.parameters()), None)
        if first is not None:
            for layer in reversed(self.layers[first + 1 :]):
                dy = layer.backward(dy)
            self.layers[first].backward(dy, input_grad=False)
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
