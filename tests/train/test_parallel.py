"""DataParallel: splitting a batch over threads (npconv.train.parallel) changes nothing but the rounding.

Tolerances: the split sums gradients chunk by chunk, so float64 results agree
with one thread up to rounding; BLAS kernels differ between CPUs (AVX2 and
AVX-512) in the last bits, so every comparison allows an absolute error scaled
to the magnitude of the values compared, never a purely relative one (an entry
near zero can carry the rounding of much larger terms).
"""

import numpy as np
import pytest

from conftest import randomize_output_layer
from npconv import models, nn, optim
from npconv.train import parallel
from npconv.train.parallel import DataParallel


@pytest.fixture
def threads():
    """Run the test with 2 threads, and restore the setting afterwards."""
    before = parallel.get_num_threads()
    parallel.set_num_threads(2)
    yield
    parallel.set_num_threads(before)


def assert_close(actual, desired, what, rtol=1e-10):
    """Equal up to rounding: ``rtol`` of the largest magnitude, for every entry (see the module docstring)."""
    scale = float(np.max(np.abs(desired)))
    np.testing.assert_allclose(actual, desired, rtol=0, atol=rtol * scale, err_msg=f"{what}: split / one thread")


def step_grads(net, model, x, labels):
    loss_fn = nn.SoftmaxCrossEntropyLoss()
    model.zero_grad()
    logits = net(x)
    loss = loss_fn(logits, labels)
    dx = net.backward(loss_fn.backward())
    return logits, loss, dx, {name: p.grad.copy() for name, p in model.named_parameters()}


def test_split_batch_equals_one_thread(rng, threads):
    model = randomize_output_layer(models.cnn(rng=rng, dtype=np.float64), rng)
    net = DataParallel(model)
    n = 2 * parallel.MIN_CHUNK + 6
    x = rng.standard_normal((n, 1, 28, 28))
    labels = rng.integers(0, 10, size=n)
    split = step_grads(net, model, x, labels)
    assert net.sizes == [103, 103], f"a batch of {n} with 2 threads should be split in two"
    serial = step_grads(model, model, x, labels)  # the model alone: one thread
    assert_close(split[0], serial[0], "logits", rtol=1e-12)
    assert split[1] == pytest.approx(serial[1], rel=1e-12)
    assert_close(split[2], serial[2], "dx")
    for name in serial[3]:
        assert_close(split[3][name], serial[3][name], name)


def test_split_training_is_repeatable(rng, threads):
    """Two identical short trainings with split batches give identical weights, bit for bit."""
    n = 2 * parallel.MIN_CHUNK
    x = rng.standard_normal((n, 1, 28, 28)).astype(np.float32)
    labels = rng.integers(0, 10, size=n)
    weights = []
    for _ in range(2):
        model = models.cnn(rng=np.random.default_rng(5))
        net = DataParallel(model)
        opt, loss_fn = optim.SGD(model.parameters(), lr=0.05, momentum=0.9), nn.SoftmaxCrossEntropyLoss()
        for _ in range(3):
            opt.zero_grad()
            loss_fn(net(x), labels)
            net.backward(loss_fn.backward(), input_grad=False)
            opt.step()
        assert net.sizes is not None
        weights.append(model.state_dict())
    for name in weights[0]:
        np.testing.assert_array_equal(weights[0][name], weights[1][name], err_msg=name)


def test_small_batches_and_active_dropout_run_in_one_thread(rng, threads):
    net = DataParallel(models.cnn(dropout=0.2, rng=rng))
    x = rng.standard_normal((2 * parallel.MIN_CHUNK, 1, 28, 28)).astype(np.float32)
    net(x)
    assert net.sizes is None, "dropout masks come from one generator in one order: no split while training"
    net.eval()
    net(x)
    assert net.sizes is not None, "in eval mode dropout is the identity: the batch can be split"
    net(x[: 2 * parallel.MIN_CHUNK - 1])
    assert net.sizes is None, "a small batch is not worth a second thread"


def test_batch_norm_trains_on_the_whole_batch_in_one_thread_and_is_split_for_inference(rng, threads):
    """Chunks would each normalize with their own mean and variance: not the same computation. So a network
    with batch normalization is not split in training mode; in eval mode its running statistics are the same
    for every sample, and the split result equals the one-thread result."""
    model = models.build_model("cnn-bn", rng=rng, dtype=np.float64)
    net = DataParallel(model)
    x = rng.standard_normal((2 * parallel.MIN_CHUNK, 1, 28, 28))
    one_thread = models.build_model("cnn-bn", rng=np.random.default_rng(5), dtype=np.float64)
    one_thread.load_state_dict({k: v.copy() for k, v in model.state_dict().items()})
    y = net(x)
    assert net.sizes is None, "batch normalization in training mode: no split"
    np.testing.assert_array_equal(y, one_thread(x))
    for name, value in one_thread.state_dict().items():  # the running statistics moved the same way
        np.testing.assert_array_equal(model.state_dict()[name], value, err_msg=name)
    net.eval()
    with nn.no_grad():
        y = net(x)
        assert net.sizes is not None, "in eval mode the batch is split"
        assert_close(y, one_thread.eval()(x), "eval logits", rtol=1e-12)


def test_a_network_of_linear_layers_is_not_split(rng, threads):
    net = DataParallel(models.mlp(rng=rng))
    net(rng.standard_normal((2 * parallel.MIN_CHUNK, 1, 28, 28)).astype(np.float32))
    assert net.sizes is None, "BLAS already spreads an MLP's matrix products over the cores"


def test_replacing_weight_arrays_rebuilds_the_replicas(rng, threads):
    model = randomize_output_layer(models.cnn(rng=rng, dtype=np.float64), rng)
    net = DataParallel(model)
    x = rng.standard_normal((2 * parallel.MIN_CHUNK, 1, 28, 28))
    net(x)
    model[7].weight.data = model[7].weight.data * 2  # a new array, not an in-place change
    split = net(x)
    assert net.sizes is not None
    assert_close(split, model(x), "logits after replacing a weight array", rtol=1e-12)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2"])
def test_set_num_threads_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="integer >= 1"):
        parallel.set_num_threads(bad)


def test_split_inference_in_pieces_equals_one_thread(rng, threads):
    """Under no_grad each thread runs its chunk in pieces of MIN_CHUNK; the outputs are unchanged."""
    model = randomize_output_layer(models.cnn(rng=rng, dtype=np.float64), rng).eval()
    net = DataParallel(model)
    n = 2 * parallel.MIN_CHUNK + 50  # two chunks of 125: pieces of 100 and 25 each
    x = rng.standard_normal((n, 1, 28, 28))
    with nn.no_grad():
        split = net(x)
        assert net.sizes == [125, 125]
        serial = model(x)
    assert split.shape == serial.shape == (n, 10)
    assert_close(split, serial, "logits in pieces", rtol=1e-12)


def test_one_thread_runs_the_model_itself(rng):
    before = parallel.get_num_threads()
    parallel.set_num_threads(1)
    try:
        model = models.cnn(rng=rng)
        net = DataParallel(model)
        x = rng.standard_normal((4 * parallel.MIN_CHUNK, 1, 28, 28)).astype(np.float32)
        np.testing.assert_array_equal(net(x), model(x))
        assert net.sizes is None
    finally:
        parallel.set_num_threads(before)
