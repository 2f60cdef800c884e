"""no_grad() holds for one thread: inference in one thread never changes a training step in another, and the
engine's worker threads see the no_grad() of the thread that called them."""

import threading

import numpy as np
import pytest

from npconv import engine, models, nn, optim
from npconv.engine import parallel, tuning


@pytest.fixture
def two_threads(monkeypatch):
    """Every DataParallel runs its chunks on exactly two threads."""
    before = parallel.get_num_threads()
    parallel.set_num_threads(2)
    monkeypatch.setattr(tuning.ThreadTuner, "threads", lambda self: 2)
    yield
    parallel.set_num_threads(before)


def train(x, y, steps=4):
    """``steps`` SGD steps of a fresh cnn (seed 0) through the engine: its weights and losses."""
    model = models.cnn(rng=np.random.default_rng(0))
    net = engine.compile(model)
    loss_fn = nn.SoftmaxCrossEntropyLoss()
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        losses.append(float(loss_fn(net(x), y)))
        net.backward(loss_fn.backward(), input_grad=False)
        opt.step()
    return {k: v.copy() for k, v in model.state_dict().items()}, losses


def test_no_grad_in_one_thread_is_not_seen_by_another():
    seen = {}
    with nn.no_grad():
        thread = threading.Thread(target=lambda: seen.update(other=nn.grad_enabled()))
        thread.start()
        thread.join()
        seen["own"] = nn.grad_enabled()
    assert seen == {"other": True, "own": False}
    assert nn.grad_enabled()


def test_inference_in_another_thread_never_changes_a_training_step(rng, two_threads):
    """One thread trains while another classifies under no_grad() without pause: the training run's numbers
    are those of a run alone, bit for bit, and so are the inferences'."""
    x = rng.standard_normal((120, 1, 28, 28)).astype(np.float32)  # three chunks
    y = rng.integers(0, 10, 120)
    x_infer = rng.standard_normal((250, 1, 28, 28)).astype(np.float32)  # three pieces
    other = engine.compile(models.build_model("cnn-bn", rng=np.random.default_rng(1))).eval()
    with nn.no_grad():
        expected = other(x_infer)
    alone = train(x, y)

    running, stop, answers = threading.Event(), threading.Event(), []

    def infer():
        with nn.no_grad():
            while not stop.is_set():
                answers.append(other(x_infer))
                running.set()

    thread = threading.Thread(target=infer)
    thread.start()
    try:
        assert running.wait(60), "the inference thread did not start"
        together = train(x, y)
        finished = len(answers)
    finally:
        stop.set()
        thread.join()
    assert finished >= 1, "the two threads should have run at the same time"
    assert together[1] == alone[1], "losses: with inference beside / alone"
    for key, value in alone[0].items():
        np.testing.assert_array_equal(together[0][key], value, err_msg=f"{key}: with inference beside / alone")
    for answer in answers:
        np.testing.assert_array_equal(answer, expected, err_msg="inference beside training / alone")


def test_the_engines_worker_threads_see_the_callers_no_grad(rng, two_threads):
    """Under no_grad() the pieces that run on the engine's worker thread keep nothing for backward either."""
    net = engine.compile(models.cnn(rng=rng)).eval()
    with nn.no_grad():
        net(rng.standard_normal((250, 1, 28, 28)).astype(np.float32))
    assert net.threads == 2 and len(net.replicas) == 1

    def kept(kernel):
        saved = getattr(kernel, "own", kernel)._saved  # a LayerKernel runs the layer's own code on its copy
        return isinstance(saved, tuple) and any(a is not None for a in saved)

    assert not [type(k.layer).__name__ for c in (net.chain, *net.replicas) for k in c.kernels if kept(k)]
    net.train()
    net(rng.standard_normal((120, 1, 28, 28)).astype(np.float32))  # a training forward keeps its caches
    assert all(kept(k) for c in (net.chain, *net.replicas) for k in c.kernels if k.parameters())
