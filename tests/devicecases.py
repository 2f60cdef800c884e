"""What the device tests run on both backends: every layer, and three training steps of the study's ConvNet.

``tests/test_backend.py`` runs them against a stand-in for CuPy (``fakecupy``), ``tests/gpu/`` against CuPy on
a real GPU, each comparing with the NumPy backend.
"""

import numpy as np

from npconv import backend, models, nn, optim
from npconv.engine import compile as compile_model
from npconv.engine.chain import kernel_for

#: Layer name -> (factory of the layer for a dtype, input shape).
LAYERS = {
    "Linear": (lambda dt: nn.Linear(12, 5, rng=np.random.default_rng(0), dtype=dt), (4, 12)),
    "Conv2d": (lambda dt: nn.Conv2d(2, 3, 3, padding=1, rng=np.random.default_rng(0), dtype=dt), (5, 2, 6, 6)),
    "Conv2d-stride": (lambda dt: nn.Conv2d(2, 3, 3, stride=2, rng=np.random.default_rng(0), dtype=dt), (5, 2, 7, 7)),
    "MaxPool2d": (lambda dt: nn.MaxPool2d(2), (5, 2, 6, 6)),
    "AvgPool2d": (lambda dt: nn.AvgPool2d(2, padding=1), (5, 2, 6, 6)),
    "BatchNorm2d": (lambda dt: nn.BatchNorm2d(2, dtype=dt), (5, 2, 6, 6)),
    "BatchNorm1d": (lambda dt: nn.BatchNorm1d(7, dtype=dt), (5, 7)),
    "ReLU": (lambda dt: nn.ReLU(), (5, 2, 6, 6)),
    "Sigmoid": (lambda dt: nn.Sigmoid(), (5, 7)),
    "Tanh": (lambda dt: nn.Tanh(), (5, 7)),
    "Flatten": (lambda dt: nn.Flatten(), (5, 2, 3, 3)),
    "Dropout": (lambda dt: nn.Dropout(0.3, rng=np.random.default_rng(3)), (5, 40)),
}


def layer_on(device, name, dtype, x, rng, dy=None, engine="reference"):
    """``(y, dx, {param: grad})`` of layer ``name`` on ``device`` for input ``x``; draws ``dy`` when not given.

    ``engine="fast"``: computed by the engine's kernel of the layer, else by the layer itself.
    """
    factory, _ = LAYERS[name]
    with backend.on_device(device):
        layer = factory(dtype)
        run = kernel_for(layer) if engine == "fast" else layer
        y = run.forward(backend.to_device(x))
        if dy is None:
            dy = rng.standard_normal(y.shape).astype(dtype)
        dx = run.backward(backend.to_device(dy))
        return y, dx, {n: p.grad for n, p in layer.named_parameters()}, dy


def three_steps(device, opt, x, labels, dtype=np.float32, on_start=None, on_end=None, engine="reference"):
    """Three SGD or Adam steps of the cnn (with dropout, output layer random) on ``device``, on ``engine``.

    Returns ``(weights as host arrays, the three losses)``; ``on_start()`` and ``on_end()`` are called just
    before and just after the steps.
    """
    with backend.on_device(device):
        model = models.cnn(dropout=0.2, rng=np.random.default_rng(1), dtype=dtype)
        last = model[len(model) - 1]
        last.weight.data[...] = backend.to_device(0.1 * np.random.default_rng(2).standard_normal(last.weight.shape))
        for layer in model:
            if isinstance(layer, nn.Dropout):
                layer.rng = np.random.default_rng(4)
        params = model.parameters()
        step = (optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4) if opt == "sgd"
                else optim.Adam(params, lr=1e-3, weight_decay=5e-4))
        loss_fn = nn.SoftmaxCrossEntropyLoss()
        xd, yd = backend.to_device(x.astype(dtype)), backend.to_device(labels)
        net = compile_model(model, engine)
        if on_start is not None:
            on_start()
        losses = []
        for _ in range(3):
            step.zero_grad()
            losses.append(loss_fn(net(xd), yd))
            net.backward(loss_fn.backward(), input_grad=False)
            step.step()
        if on_end is not None:
            on_end()
        return {n: backend.to_numpy(p.data) for n, p in model.named_parameters()}, losses
