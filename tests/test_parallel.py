"""Splitting a batch over threads (npconv.parallel) changes nothing but the rounding."""

import numpy as np
import pytest

from conftest import randomize_output_layer
from npconv import models, nn, optim, parallel


@pytest.fixture
def threads():
    """Run the test with 2 threads, and restore the setting afterwards."""
    before = parallel.get_num_threads()
    parallel.set_num_threads(2)
    yield
    parallel.set_num_threads(before)


def step_grads(model, x, labels):
    loss_fn = nn.SoftmaxCrossEntropyLoss()
    model.zero_grad()
    logits = model(x)
    loss = loss_fn(logits, labels)
    dx = model.backward(loss_fn.backward())
    return logits, loss, dx, {name: p.grad.copy() for name, p in model.named_parameters()}


def test_split_batch_equals_one_thread(rng, threads):
    model = randomize_output_layer(models.cnn(rng=rng, dtype=np.float64), rng)
    n = 2 * parallel.MIN_CHUNK + 6
    x = rng.standard_normal((n, 1, 28, 28))
    labels = rng.integers(0, 10, size=n)
    split = step_grads(model, x, labels)
    assert model._split, f"a batch of {n} with 2 threads should be split"
    parallel.set_num_threads(1)
    serial = step_grads(model, x, labels)
    assert not model._split
    np.testing.assert_allclose(split[0], serial[0], rtol=1e-12, atol=1e-12, err_msg="logits: split / one thread")
    assert split[1] == pytest.approx(serial[1], rel=1e-12)
    np.testing.assert_allclose(split[2], serial[2], rtol=1e-10, atol=1e-14, err_msg="dx: split / one thread")
    for name in serial[3]:
        np.testing.assert_allclose(split[3][name], serial[3][name], rtol=1e-10, atol=1e-14,
                                   err_msg=f"{name}: split / one thread")


def test_split_training_is_repeatable(rng, threads):
    """Two identical short trainings with split batches give identical weights, bit for bit."""
    n = 2 * parallel.MIN_CHUNK
    x = rng.standard_normal((n, 1, 28, 28)).astype(np.float32)
    labels = rng.integers(0, 10, size=n)
    weights = []
    for _ in range(2):
        model = models.cnn(rng=np.random.default_rng(5))
        opt, loss_fn = optim.SGD(model.parameters(), lr=0.05, momentum=0.9), nn.SoftmaxCrossEntropyLoss()
        for _ in range(3):
            opt.zero_grad()
            loss_fn(model(x), labels)
            model.backward(loss_fn.backward(), input_grad=False)
            opt.step()
        assert model._split
        weights.append(model.state_dict())
    for name in weights[0]:
        np.testing.assert_array_equal(weights[0][name], weights[1][name], err_msg=name)


def test_small_batches_and_active_dropout_run_in_one_thread(rng, threads):
    model = models.cnn(dropout=0.2, rng=rng)
    x = rng.standard_normal((2 * parallel.MIN_CHUNK, 1, 28, 28)).astype(np.float32)
    model(x)
    assert not model._split, "dropout masks come from one generator in one order: no split while training"
    model.eval()
    model(x)
    assert model._split, "in eval mode dropout is the identity: the batch can be split"
    model(x[: 2 * parallel.MIN_CHUNK - 1])
    assert not model._split, "a small batch is not worth a second thread"


def test_a_network_of_linear_layers_is_not_split(rng, threads):
    model = models.mlp(rng=rng)
    model(rng.standard_normal((2 * parallel.MIN_CHUNK, 1, 28, 28)).astype(np.float32))
    assert not model._split, "BLAS already spreads an MLP's matrix products over the cores"


def test_replacing_weight_arrays_rebuilds_the_replicas(rng, threads):
    model = randomize_output_layer(models.cnn(rng=rng, dtype=np.float64), rng)
    x = rng.standard_normal((2 * parallel.MIN_CHUNK, 1, 28, 28))
    model(x)
    model[7].weight.data = model[7].weight.data * 2  # a new array, not an in-place change
    split = model(x)
    assert model._split
    parallel.set_num_threads(1)
    np.testing.assert_allclose(split, model(x), rtol=1e-12)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2"])
def test_set_num_threads_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="integer >= 1"):
        parallel.set_num_threads(bad)


def test_split_inference_in_pieces_equals_one_thread(rng, threads):
    """Under no_grad each thread runs its chunk in pieces of MIN_CHUNK; the outputs are unchanged."""
    model = randomize_output_layer(models.cnn(rng=rng, dtype=np.float64), rng).eval()
    n = 2 * parallel.MIN_CHUNK + 50  # two chunks of 125: pieces of 100 and 25 each
    x = rng.standard_normal((n, 1, 28, 28))
    with nn.no_grad():
        split = model(x)
        assert model._split
        parallel.set_num_threads(1)
        serial = model(x)
    assert split.shape == serial.shape == (n, 10)
    np.testing.assert_allclose(split, serial, rtol=1e-12, atol=1e-12, err_msg="logits: split in pieces / one thread")
