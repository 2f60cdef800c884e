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
        return x

    def backward(self, dy):
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

    def __getitem__(self, i):
        return self.layers[i]

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __repr__(self):
        lines = [f"  ({i}): {layer!r}" for i, layer in enumerate(self.layers)]
        return "Sequential(\n" + "\n".join(lines) + "\n)"
