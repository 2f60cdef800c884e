"""End-to-end sanity checks of the study's models (CS231n style).

1. Before training, a classifier over 10 classes should be unsure: softmax
   close to uniform, so the cross-entropy is close to -ln(1/10) = ln 10 ~ 2.303.
2. A tiny batch with random labels can be memorized: 100% training accuracy
   in a few dozen steps. If a model cannot do that, its gradients are broken.

The images are MNIST-like (mostly background, ~20% random "ink"), normalized
with MNIST's mean and standard deviation, so nothing here needs the dataset.
"""

import math
import time

import numpy as np
import pytest

from npconv import models, nn, optim

LN10 = math.log(10)
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def mnist_like_batch(rng, n):
    ink = rng.random((n, 1, 28, 28)) < 0.2
    images = ink * rng.random((n, 1, 28, 28))
    x = ((images - MNIST_MEAN) / MNIST_STD).astype(np.float32)
    return x, rng.integers(0, 10, size=n)


@pytest.mark.parametrize("name", models.MODELS)
def test_initial_loss_is_ln10(rng, name):
    """Every preset starts its output layer at zero: uniform softmax, loss exactly ln 10."""
    model = models.build_model(name, rng=rng)
    x, labels = mnist_like_batch(rng, 256)
    loss = nn.SoftmaxCrossEntropyLoss()(model(x), labels)
    assert abs(loss - LN10) < 1e-5, f"{name}: initial loss {loss:.6f} / ln 10 = {LN10:.6f}"


@pytest.mark.parametrize("name", models.MODELS)
def test_zero_output_layer_still_trains_every_layer(rng, name):
    """From the second step on, every parameter receives a gradient and the loss falls (but for a
    bias right before a batch normalization, which the normalization cancels exactly)."""
    model = models.build_model(name, rng=rng)
    x, labels = mnist_like_batch(rng, 64)
    loss_fn, optimizer = nn.SoftmaxCrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        losses.append(loss_fn(model(x), labels))
        model.backward(loss_fn.backward())
        optimizer.step()
    before_bn = {f"{i}.bias" for i in range(len(model) - 1)
                 if isinstance(model[i + 1], (nn.BatchNorm1d, nn.BatchNorm2d))}
    for pname, p in model.named_parameters():
        if pname not in before_bn:
            assert np.abs(p.grad).max() > 0, f"{name}: {pname} got no gradient at step 3"
    assert losses[-1] < losses[0], f"{name}: losses {losses}"


def train_until_memorized(model, optimizer, x, labels, max_steps):
    """Full-batch training until 100% accuracy and loss < 0.05; returns (steps, loss, accuracy)."""
    loss_fn = nn.SoftmaxCrossEntropyLoss()
    model.train()
    for step in range(1, max_steps + 1):
        optimizer.zero_grad()
        logits = model(x)
        loss = loss_fn(logits, labels)
        model.backward(loss_fn.backward())
        optimizer.step()
        accuracy = float(np.mean(logits.argmax(axis=1) == labels))
        if accuracy == 1.0 and loss < 0.05:
            break
    # Accuracy of the trained weights, in eval mode (what predict would see).
    model.eval()
    accuracy = float(np.mean(model(x).argmax(axis=1) == labels))
    return step, loss, accuracy


OPTIMIZERS = {
    "SGD": lambda params: optim.SGD(params, lr=0.05, momentum=0.9),
    "Adam": lambda params: optim.Adam(params, lr=1e-3),
}


@pytest.mark.parametrize("optimizer_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("name", models.MODELS)
def test_tiny_batch_can_be_overfit(rng, name, optimizer_name):
    model = models.build_model(name, rng=rng)
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    x, labels = mnist_like_batch(rng, 20)  # random labels: only memorization can fit them

    start = time.perf_counter()
    steps, loss, accuracy = train_until_memorized(model, optimizer, x, labels, max_steps=300)
    seconds = time.perf_counter() - start

    summary = (f"{name} + {optimizer_name}: {steps} steps, {seconds:.1f} s, "
               f"loss {loss:.4f}, accuracy {accuracy:.2f}")
    assert accuracy == 1.0, f"could not memorize 20 images: {summary}"
    assert loss < 0.05, f"training loss still high: {summary}"
