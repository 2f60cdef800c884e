"""DataParallel (npconv.engine.parallel): fixed chunks, any number of threads, the same bits.

Two different claims, tested separately:

* the thread count never changes a number: the same chunks are computed the same
  way wherever they run, so 1 and 2 threads give identical bits (training steps,
  inference, a whole ``run_training``);
* cutting a batch into chunks changes the numbers only by rounding (gradients are
  summed chunk by chunk): compared with the model on the whole batch, with an
  absolute tolerance scaled to the magnitude of the values (BLAS kernels differ
  between CPUs in the last bits; an entry near zero can carry the rounding of much
  larger terms).
"""

import numpy as np
import pytest

from conftest import randomize_output_layer
from npconv import models, nn, optim
from npconv.engine import parallel, stages, tuning
from npconv.train import TrainConfig, run_training
from npconv.engine.parallel import DataParallel


@pytest.fixture
def threads(monkeypatch):
    """``threads(n)``: from now on, every DataParallel runs its chunks on exactly ``n`` threads."""
    before = parallel.get_num_threads()

    def use(n):
        parallel.set_num_threads(n)
        monkeypatch.setattr(tuning.ThreadTuner, "threads", lambda self: n)

    yield use
    parallel.set_num_threads(before)


def assert_close(actual, desired, what, rtol=1e-10):
    """Equal up to rounding: ``rtol`` of the largest magnitude, for every entry (see the module docstring)."""
    scale = float(np.max(np.abs(desired)))
    np.testing.assert_allclose(actual, desired, rtol=0, atol=rtol * scale, err_msg=f"{what}: chunked / whole batch")


def step(net, model, x, labels, input_grad=True):
    """One forward and backward; returns the logits, the loss, dx and every gradient."""
    loss_fn = nn.SoftmaxCrossEntropyLoss()
    model.zero_grad()
    logits = net(x)
    loss = loss_fn(logits, labels)
    dx = net.backward(loss_fn.backward(), input_grad=input_grad)
    return logits, loss, dx, {name: p.grad.copy() for name, p in model.named_parameters()}


def test_a_batch_is_cut_into_fixed_chunks(rng, threads):
    net = DataParallel(models.cnn(rng=rng))
    x = rng.standard_normal((2 * parallel.CHUNK + 6, 1, 28, 28)).astype(np.float32)
    for n in (1, 2):
        threads(n)
        net(x)
        assert net.sizes == [36, 35, 35], f"{len(x)} images in chunks of at most {parallel.CHUNK}, with {n} threads"
    net(x[: parallel.CHUNK])
    assert net.sizes is None, "a batch of one chunk is run as it is"
    with nn.no_grad():
        net(rng.standard_normal((2 * parallel.PIECE + 50, 1, 28, 28)).astype(np.float32))
    assert net.sizes == [84, 83, 83], f"inference goes in pieces of at most {parallel.PIECE}"


def test_chunked_batch_equals_the_whole_batch_up_to_rounding(rng, threads):
    threads(2)
    model = randomize_output_layer(models.cnn(rng=rng, dtype=np.float64), rng)
    n = 2 * parallel.CHUNK + 6
    x = rng.standard_normal((n, 1, 28, 28))
    labels = rng.integers(0, 10, size=n)
    chunked = step(DataParallel(model), model, x, labels)
    whole = step(model, model, x, labels)
    assert_close(chunked[0], whole[0], "logits", rtol=1e-12)
    assert chunked[1] == pytest.approx(whole[1], rel=1e-12)
    assert_close(chunked[2], whole[2], "dx")
    for name in whole[3]:
        assert_close(chunked[3][name], whole[3][name], name)


def short_training(x, labels, dropout=0.0, steps=3):
    """Weights after a few SGD steps of a fresh cnn through DataParallel (float32, as in training)."""
    model = models.cnn(dropout=dropout, rng=np.random.default_rng(5))
    net = DataParallel(model)
    opt, loss_fn = optim.SGD(model.parameters(), lr=0.05, momentum=0.9), nn.SoftmaxCrossEntropyLoss()
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(net(x), labels)
        net.backward(loss_fn.backward(), input_grad=False)
        opt.step()
    assert net.sizes is not None, "the batch should have been cut"
    return model.state_dict(), net.threads


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_the_thread_count_never_changes_a_bit(rng, threads, dropout):
    """Training steps with 1 and 2 threads, and twice with 2, give identical weights."""
    x = rng.standard_normal((2 * parallel.CHUNK, 1, 28, 28)).astype(np.float32)
    labels = rng.integers(0, 10, size=len(x))
    runs = []
    for n in (1, 2, 2):
        threads(n)
        weights, used = short_training(x, labels, dropout)
        assert used == (1 if dropout else n), "active dropout: chunks one after another, in order"
        runs.append(weights)
    for other in runs[1:]:
        for name in runs[0]:
            np.testing.assert_array_equal(other[name], runs[0][name], err_msg=f"{name}: 2 threads / 1 thread")


def test_inference_gives_the_same_bits_on_any_number_of_threads(rng, threads):
    model = randomize_output_layer(models.cnn(rng=rng), rng).eval()
    x = rng.standard_normal((3 * parallel.PIECE + 7, 1, 28, 28)).astype(np.float32)
    outputs = []
    for n in (1, 2):
        threads(n)
        with nn.no_grad():
            outputs.append(DataParallel(model)(x))
    np.testing.assert_array_equal(outputs[1], outputs[0], err_msg="logits, 2 threads / 1 thread")
    with nn.no_grad():
        assert_close(outputs[0], model(x), "logits in pieces", rtol=1e-5)


def test_a_run_is_bit_identical_to_itself_with_any_number_of_threads(tmp_path, threads):
    """``run_training`` twice with 1 thread and once with 2: the same history and model, bit for bit."""
    config = TrainConfig(epochs=1, train_subset=300, batch_size=100)
    results = []
    for i, n in enumerate((1, 1, 2)):
        threads(n)
        out = tmp_path / f"run{i}"
        run_training(config, str(out), progress=False, log=lambda *a: None)
        history = (out / "history.csv").read_text().splitlines()
        seconds = history[0].split(",").index("seconds")
        without_time = [",".join(v for j, v in enumerate(row.split(",")) if j != seconds) for row in history]
        with np.load(out / "model.npz") as f:
            results.append((without_time, {k: f[k] for k in f.files if k != "__config__"}))
    for history, weights in results[1:]:
        assert history == results[0][0], "history.csv (but its seconds column) differs between runs"
        for name in weights:
            np.testing.assert_array_equal(weights[name], results[0][1][name], err_msg=name)


class BatchMean(nn.Module):
    """A layer that mixes the samples of a batch (as batch normalization does): subtracts the batch mean."""

    def forward(self, x):
        return x - x.mean(axis=0)

    def backward(self, dy):
        return dy - dy.mean(axis=0)


def test_a_layer_that_mixes_samples_keeps_the_batch_whole(rng, threads):
    threads(2)
    model = nn.Sequential(nn.Flatten(), BatchMean(), nn.Linear(784, 10, rng=rng))
    x = rng.standard_normal((3 * parallel.CHUNK, 1, 28, 28))
    net = DataParallel(model)
    out = net(x)
    assert net.sizes is None
    np.testing.assert_array_equal(out, model(x))


def test_batch_norm_pools_the_statistics_of_every_chunk(rng, threads):
    """Each chunk's own mean and variance would be another computation. So in training mode every chunk's
    batch norm takes its moments, DataParallel pools them into the whole batch's statistics, and every chunk
    normalizes with those; backward pools dbeta and dgamma the same way. The step equals the whole model's
    up to rounding (running statistics included), and 1 or 2 threads give the same bits. In eval mode the
    running statistics are the same for every sample."""
    model = randomize_output_layer(models.build_model("cnn-bn", rng=rng, dtype=np.float64), rng)
    state = {k: v.copy() for k, v in model.state_dict().items()}
    n = 2 * parallel.CHUNK + 6
    x, labels = rng.standard_normal((n, 1, 28, 28)), rng.integers(0, 10, size=n)
    whole = step(model, model, x, labels)
    after_whole = {k: v.copy() for k, v in model.state_dict().items()}
    runs = []
    for threads_used in (1, 2):
        threads(threads_used)
        model.load_state_dict(state)
        net = DataParallel(model)
        result = step(net, model, x, labels, input_grad=True)
        assert net.sizes == [36, 35, 35]
        runs.append((result, {k: v.copy() for k, v in model.state_dict().items()}))
    (chunked, after), (two_threads, after_two) = runs
    assert_close(chunked[0], whole[0], "logits", rtol=1e-12)
    assert_close(chunked[2], whole[2], "dx")
    for name in whole[3]:
        # A convolution's bias before a batch norm has a gradient of exactly 0 (the normalization removes any
        # shift): only rounding is left, so every gradient is compared at the scale of its layer's largest.
        layer = name.split(".")[0]
        scale = max(float(np.max(np.abs(g))) for other, g in whole[3].items() if other.split(".")[0] == layer)
        np.testing.assert_allclose(chunked[3][name], whole[3][name], rtol=0, atol=1e-10 * scale, err_msg=name)
        np.testing.assert_array_equal(two_threads[3][name], chunked[3][name], err_msg=f"{name}: 2 threads / 1")
    for name, value in after_whole.items():  # the running statistics moved the same way
        assert_close(after[name], value, name)
        np.testing.assert_array_equal(after_two[name], after[name], err_msg=f"{name}: 2 threads / 1")
    net = DataParallel(model).eval()
    with nn.no_grad():
        y = net(x)
        assert net.sizes is not None, "in eval mode the batch is split"
        assert_close(y, model.eval()(x), "eval logits", rtol=1e-12)


def test_chunk_statistics_would_be_another_computation(rng):
    """The check above can fail: normalizing each chunk with its own statistics gives other logits."""
    model = randomize_output_layer(models.build_model("cnn-bn", rng=rng, dtype=np.float64), rng)
    n = 2 * parallel.CHUNK
    x = rng.standard_normal((n, 1, 28, 28)) + np.linspace(0, 3, n)[:, None, None, None]  # the chunks differ
    whole = model(x)
    state = model.state_dict()
    per_chunk = np.concatenate([(model.load_state_dict(state), model(part))[1] for part in np.split(x, 2)])
    assert np.max(np.abs(per_chunk - whole)) > 1e-3


def test_a_network_of_linear_layers_is_not_cut(rng, threads):
    threads(2)
    net = DataParallel(models.mlp(rng=rng))
    net(rng.standard_normal((3 * parallel.CHUNK, 1, 28, 28)).astype(np.float32))
    assert net.sizes is None, "a few matrix products cost more in chunks than on the whole batch"


def test_replacing_weight_arrays_rebuilds_the_replicas(rng, threads):
    threads(2)
    model = randomize_output_layer(models.cnn(rng=rng, dtype=np.float64), rng)
    net = DataParallel(model)
    x = rng.standard_normal((2 * parallel.CHUNK, 1, 28, 28))
    net(x)
    model[7].weight.data = model[7].weight.data * 2  # a new array, not an in-place change
    chunked = net(x)
    assert net.sizes is not None
    assert_close(chunked, model(x), "logits after replacing a weight array", rtol=1e-12)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2"])
def test_set_num_threads_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="integer >= 1"):
        parallel.set_num_threads(bad)


def test_blas_runs_on_one_thread_inside_chunks_and_as_configured_otherwise(rng, threads):
    """The chunks' products run on one BLAS thread (their bits depend on it); a batch that is not cut runs with
    BLAS as configured (a network of Linear layers is fastest on BLAS's own threads)."""
    from threadpoolctl import threadpool_info, threadpool_limits

    seen = []

    class Spy(nn.ReLU):  # a per-sample layer that notes BLAS's threads
        def forward(self, x):
            seen.append(max((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"), default=1))
            return x

        def backward(self, dy):
            return dy

    threads(2)
    with threadpool_limits(limits=2, user_api="blas"):
        net = DataParallel(nn.Sequential(Spy(), nn.Conv2d(1, 2, 3, padding=1, rng=rng), nn.Flatten()))
        net(rng.standard_normal((3 * parallel.CHUNK, 1, 4, 4)).astype(np.float32))
        assert net.sizes is not None and seen == [1, 1, 1], seen
        seen.clear()
        DataParallel(nn.Sequential(Spy(), nn.Flatten()))(rng.standard_normal((3, 1, 2, 2)))
        assert seen == [2], seen


def test_a_fixed_thread_count_overrides_the_tuner_with_the_same_numbers(rng):
    """``DataParallel(model, threads=n)`` (speed.py's one- and two-thread steps) runs on n threads, whatever the
    tuner would choose, and computes the same bits."""
    before = parallel.get_num_threads()
    parallel.set_num_threads(2)
    try:
        model = models.build_model("cnn-bn", rng=np.random.default_rng(0))
        x = rng.standard_normal((2 * parallel.CHUNK, 1, 28, 28)).astype(np.float32)
        grads = []
        for n in (1, 2):
            net = DataParallel(model, threads=n)
            y = net(x)
            assert net.threads == n, f"asked for {n} threads, ran on {net.threads}"
            for p in model.parameters():
                p.grad[...] = 0
            net.backward(np.ones_like(y) / y.size, input_grad=False)
            grads.append([p.grad.copy() for p in model.parameters()])
        for one, two in zip(*grads):
            np.testing.assert_array_equal(two, one, err_msg="gradients, 2 threads / 1 thread")
    finally:
        parallel.set_num_threads(before)


def _recording_stages(log, threaded=(True, False, True, True), fail=None):
    """Stages that add ``k + 1`` to each chunk's value at stage ``k`` and log ``(stage, chunk, thread)``; each
    meeting passes on the sum of the values (each chunk's note); at stage ``fail = (k, i)`` chunk i raises."""
    import threading

    def stage(k, threaded):
        def task(i, value, shared):
            log.append((k, i, threading.get_ident(), shared))
            if fail == (k, i):
                raise ValueError(f"stage {k}, chunk {i}")
            return value + k + 1, value + k + 1  # the new value, and it again as the note for the meeting

        def meet(notes):
            return sum(notes)

        return stages.Stage(task, meet, threaded)

    return [stage(k, t) for k, t in enumerate(threaded)]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_stages_run_every_chunk_in_order_and_meet_between(threads, n):
    """Whatever the threads, chunk i goes through every stage in order and each stage's tasks see the meeting of
    the stage before (the sum of every chunk's value): the numbers cannot depend on where a chunk ran."""
    import threading

    threads(n)
    log = []
    values = parallel._run_stages(_recording_stages(log), [0, 10, 20, 30, 40], n)
    assert values == [10, 20, 30, 40, 50]  # each value + 1 + 2 + 3 + 4
    by_stage = {k: {i: shared for kk, i, _, shared in log if kk == k} for k in range(4)}
    assert by_stage == {0: dict.fromkeys(range(5)), 1: dict.fromkeys(range(5), 105),
                        2: dict.fromkeys(range(5), 115), 3: dict.fromkeys(range(5), 130)}, by_stage
    caller = threading.get_ident()
    assert all(ident == caller for k, _, ident, _ in log if k == 1), "an unthreaded stage runs in the caller"
    used = {ident for k, _, ident, _ in log if k != 1}
    assert len(used) == n, f"the threaded stages used {len(used)} threads, not {n}"
    for k in (0, 2, 3):  # chunk i always on thread i % n
        owner = {i: ident for kk, i, ident, _ in log if kk == k}
        assert all(owner[i] == owner[i % n] for i in range(5))


@pytest.mark.parametrize("where", [(0, 0), (2, 1), (1, 3), (3, 3), (3, 4)])
def test_an_error_in_any_chunk_is_raised_and_no_thread_waits_for_ever(threads, where):
    """A task that fails in the caller or in another thread, in a threaded stage or not, is raised as itself (not as
    the broken barrier the other threads saw), and the call returns."""
    threads(2)
    with pytest.raises(ValueError, match=f"stage {where[0]}, chunk {where[1]}"):
        parallel._run_stages(_recording_stages([], fail=where), [0, 10, 20, 30, 40], 2)
    assert parallel._run_stages(_recording_stages([]), [0, 1], 2) == [10, 11], "the pool still works afterwards"


class _Runner:
    """A chain's stand-in for :func:`parallel._run_shared`: doubles a piece, ``delay`` seconds each, and notes it."""

    def __init__(self, delay, log, fail_at=None):
        self.delay, self.log, self.fail_at = delay, log, fail_at

    def forward(self, piece):
        import threading
        import time

        if self.fail_at in (piece, "any"):
            raise ValueError(f"piece {piece}")
        time.sleep(self.delay)
        self.log.append((threading.get_ident(), piece))
        return 2 * piece


def test_inference_pieces_go_to_whichever_thread_is_free(threads):
    """Each thread takes the next piece not yet taken: a thread four times slower computes few of twelve pieces
    (dealt out in turn, it would compute six), every piece exactly once, the outputs in piece order."""
    import threading

    threads(2)
    log = []
    outputs = parallel._run_shared([_Runner(0.04, log), _Runner(0.01, log)], list(range(12)))
    assert outputs == [2 * i for i in range(12)]
    assert sorted(piece for _, piece in log) == list(range(12)), "a piece computed twice, or never"
    caller = sum(1 for ident, _ in log if ident == threading.get_ident())
    assert 1 <= caller <= 4, f"the slow calling thread computed {caller} of 12 pieces"


@pytest.mark.parametrize("runner", [0, 1])
def test_an_error_in_a_shared_piece_is_raised_and_the_pool_goes_on(threads, runner):
    """A runner that fails, in the calling thread or the other, is raised as itself once the other thread has
    run out of pieces; the pool still works afterwards."""
    threads(2)
    runners = [_Runner(0.005, [], fail_at="any" if k == runner else None) for k in range(2)]
    with pytest.raises(ValueError, match="piece"):
        parallel._run_shared(runners, list(range(40)))
    assert parallel._run_shared([_Runner(0, []), _Runner(0, [])], [1, 2, 3]) == [2, 4, 6]


def test_inference_starts_on_every_core_training_on_one_thread(rng):
    """Before its first trial a training step runs on one thread; an inference batch in evaluation mode (its pieces
    shared) on every core; in training mode under no_grad (its batch norms meet) on one thread."""
    before = parallel.get_num_threads()
    parallel.set_num_threads(2)
    try:
        net = DataParallel(models.build_model("cnn-bn", rng=np.random.default_rng(0)), processes=False)
        assert net._tuner(True, 2).threads() == 1
        net.eval()
        assert net._tuner(False, 10).threads() == 2
        net.train()
        net.tuners.clear()
        assert net._tuner(False, 10).threads() == 1
    finally:
        parallel.set_num_threads(before)
