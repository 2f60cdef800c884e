"""Helper processes (npconv/engine/processes.py): chunks computed in another process give the bits threads give.

The pool of helpers is the process's own and shared by every test here: a helper starts once (a few tenths of a
second) and each model is sent to it once.
"""

import glob
import os
import signal
import tempfile
import threading

import numpy as np
import pytest

from npconv import models, nn, optim
from npconv.engine import DataParallel, parallel, processes
from npconv.engine.tuning import InProcesses, ThreadTuner

pytestmark = pytest.mark.skipif(not processes.available(),
                                reason="helper processes need Linux (eventfd) and a Python with the interpreter lock")


@pytest.fixture(autouse=True)
def two_cores():
    """Two cores allowed whatever the machine has; a pool stopped by a test is usable again afterwards."""
    before = parallel.get_num_threads()
    parallel.set_num_threads(2)
    yield
    parallel.set_num_threads(before)
    processes.POOL.broken = None


@pytest.fixture
def apart(monkeypatch):
    """The passes that ran in helper processes: a list with one entry per pass, its number of helpers (training
    passes, :func:`processes.run_apart`, and inference passes, :func:`processes.run_shared`)."""
    passes = []
    run_apart, run_shared = processes.run_apart, processes.run_shared

    def spy_apart(stages, values, helpers):
        passes.append(len(helpers))
        return run_apart(stages, values, helpers)

    def spy_shared(chain, pieces, helpers):
        passes.append(len(helpers))
        return run_shared(chain, pieces, helpers)

    monkeypatch.setattr(processes, "run_apart", spy_apart)
    monkeypatch.setattr(processes, "run_shared", spy_shared)
    return passes


def _model(name):
    """A preset with every parameter drawn at random (a fresh preset's last layer starts at zero: its outputs
    would be equal whatever computed them)."""
    model = models.build_model(name, rng=np.random.default_rng(0))
    rng = np.random.default_rng(1)
    for p in model.parameters():
        p.data[...] = rng.standard_normal(p.data.shape) * 0.2
    return model


def _images(rng, n):
    return rng.standard_normal((n, 1, 28, 28)).astype(np.float32)


def _train(model_name, way, batches, labels):
    """Train a fresh model on ``batches`` with DataParallel(threads, processes) = ``way``; return its state, the
    losses and the network."""
    model = _model(model_name)
    net = DataParallel(model, threads=way[0], processes=way[1])
    loss_fn = nn.SoftmaxCrossEntropyLoss()
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    losses = []
    for x, y in zip(batches, labels):
        opt.zero_grad()
        losses.append(loss_fn(net(x), y))
        net.backward(loss_fn.backward(), input_grad=False)
        opt.step()
    return {k: v.copy() for k, v in model.state_dict().items()}, losses, net


@pytest.mark.parametrize("model_name", ["cnn-bn", "cnn"])
def test_training_in_a_helper_gives_the_bits_of_one_thread_and_of_two(model_name, rng):
    """Steps of batches of 100, 150 and 60 (2, 3 and 2 chunks: the helper's room for gradients grows): every
    parameter, running statistic and loss is the same to the last bit on 1 thread, 2 threads and 2 processes."""
    sizes = [100, 150, 60]
    batches = [_images(rng, n) for n in sizes]
    labels = [rng.integers(0, 10, n) for n in sizes]
    runs = {way: _train(model_name, way, batches, labels) for way in [(1, False), (2, False), (2, True)]}
    assert runs[2, True][2]._step.helpers, "the last step did not run in a helper"
    state, losses, _ = runs[1, False]
    for way in [(2, False), (2, True)]:
        assert runs[way][1] == losses, way
        for name, value in state.items():
            np.testing.assert_array_equal(runs[way][0][name], value, err_msg=f"{name}, {way}")


def test_the_input_gradient_and_inference_in_a_helper_are_those_of_one_thread(rng, apart):
    """``backward(dy, input_grad=True)`` returns the helper's chunks' dx in place; under ``no_grad()`` in evaluation
    mode (running statistics) a batch of 550 in pieces of at most 100 gives the one-thread output (the helper's three
    pieces do not fit where its chunk of the training step went: its inbox grows)."""
    model = _model("cnn-bn")
    x = _images(rng, 100)
    dy = rng.standard_normal((100, 10)).astype(np.float32)
    one, two = DataParallel(model, threads=1), DataParallel(model, threads=2, processes=True)
    results = []
    for net in (one, two):
        y = net(x)
        results.append((y, net.backward(dy, input_grad=True)))
    assert two._step.helpers
    np.testing.assert_array_equal(results[1][0], results[0][0])
    np.testing.assert_array_equal(results[1][1], results[0][1])
    model.eval()
    with nn.no_grad():
        xs = _images(rng, 550)
        np.testing.assert_array_equal(two(xs), one(xs))
        assert two.sizes == [92, 92, 92, 92, 91, 91]
    assert apart == [1, 1, 1], "forward, backward and inference each ran in one helper"


def test_training_steps_around_an_inference_pass_give_the_bits_of_one_thread(rng, apart):
    """An inference pass (its pieces computed straight from the shared inbox) between two training steps (whose
    chunks the helper copies out of it) leaves every output, dx and gradient that of one thread."""
    xs, other = [_images(rng, 100), _images(rng, 250)], _images(rng, 550)  # the helper: 1 and 2 chunks, 3 pieces
    dys = [rng.standard_normal((len(x), 10)).astype(np.float32) for x in xs]
    results = []
    for way in [(1, False), (2, True)]:
        model = _model("cnn-bn")
        net = DataParallel(model, threads=way[0], processes=way[1])
        seen = []
        for k, (x, dy) in enumerate(zip(xs, dys)):
            for p in model.parameters():
                p.grad.fill(0)
            seen += [net(x), net.backward(dy, input_grad=True), *[p.grad.copy() for p in model.parameters()]]
            if k == 0:
                with nn.no_grad():
                    seen.append(net(other))
        results.append(seen)
    assert apart == [1] * 5, "two forwards, two backwards and the inference each ran in a helper"
    for theirs, mine in zip(*results):
        np.testing.assert_array_equal(mine, theirs)


def test_a_helper_computes_with_the_model_as_it_is_now(rng, apart):
    """Values changed between passes (``load_state_dict``, an in-place update) reach the helper."""
    model = _model("cnn")
    one, two = DataParallel(model, threads=1), DataParallel(model, threads=2, processes=True)
    x = _images(rng, 3 * parallel.PIECE)  # inference: pieces of PIECE images
    with nn.no_grad():
        two(x)
        state = {k: v * 0.5 for k, v in model.state_dict().items()}
        model.load_state_dict(state)
        np.testing.assert_array_equal(two(x), one(x))
        model.parameters()[0].data += 1
        np.testing.assert_array_equal(two(x), one(x))
    assert len(apart) == 3


def test_an_error_in_a_helper_is_raised_here_and_the_helper_goes_on():
    """A message a helper cannot answer comes back as a HelperError naming the error; the helper still serves."""
    helper = processes.POOL.start(1)[0]
    helper.send(("backward", -1, [], False, []))  # no model -1
    with pytest.raises(processes.HelperError, match="KeyError"):
        helper.receive()
    helper.send(("drop", -1))
    helper.send(("backward", -1, [], False, []))
    with pytest.raises(processes.HelperError, match="KeyError"):
        helper.receive()


def test_a_helper_that_dies_stops_the_helpers_and_later_passes_run_on_threads(rng):
    """A killed helper: the pass raises HelperError; the next ones run on threads with the one-thread numbers."""
    model = _model("cnn")
    one, two = DataParallel(model, threads=1), DataParallel(model, threads=2, processes=True)
    x = _images(rng, 3 * parallel.PIECE)  # inference: pieces of PIECE images
    with nn.no_grad():
        two(x)
        helper = processes.POOL.helpers[0]
        helper.process.kill()
        helper.process.wait()
        with pytest.raises(processes.HelperError, match="helper process stopped"):
            two(x)
        assert processes.POOL.broken is not None and processes.POOL.helpers == []
        np.testing.assert_array_equal(two(x), one(x))
        assert two.threads == 2


def test_helpers_ignore_ctrl_c_and_sigterm_and_leave_no_shared_files(rng, apart):
    """Ctrl-C reaches every process of the terminal (SIGTERM, of a service): a helper ignores both (the trainer
    stops at a safe point, then stops it). Shared memory
    has no name in the file system (nothing can be left behind)."""
    patterns = [os.path.join(folder, "npconv-*") for folder in ("/dev/shm", tempfile.gettempdir())]
    before = {name for pattern in patterns for name in glob.glob(pattern)}
    model = _model("cnn")
    one, two = DataParallel(model, threads=1), DataParallel(model, threads=2, processes=True)
    x = _images(rng, 3 * parallel.PIECE)  # inference: pieces of PIECE images
    with nn.no_grad():
        two(x)
        for stop in (signal.SIGINT, signal.SIGTERM):
            os.kill(processes.POOL.helpers[0].process.pid, stop)
        np.testing.assert_array_equal(two(x), one(x))
    assert len(apart) == 2
    assert {name for pattern in patterns for name in glob.glob(pattern)} <= before


def test_the_tuner_tries_processes_where_they_can_run():
    """Processes are a candidate of the tuner beside the thread counts, unless turned off."""
    assert ThreadTuner(2, processes=True).candidates == [1, 2, InProcesses(2)]
    assert ThreadTuner(1, processes=True).candidates == [1]
    model = models.build_model("cnn", rng=np.random.default_rng(0))
    net = DataParallel(model)
    assert InProcesses(2) in net._tuner(True, 2).candidates
    parallel.set_processes(False)
    try:
        assert DataParallel(model)._tuner(True, 2).candidates == [1, 2]
    finally:
        parallel.set_processes(True)
    assert DataParallel(model, processes=False)._tuner(True, 2).candidates == [1, 2]


def test_a_helper_that_cannot_start_leaves_the_pass_to_threads(rng, monkeypatch):
    """A Python that cannot run a helper (here ``false``): the pass runs on threads with the same numbers, and
    the helpers are not tried again in this process."""
    processes.POOL.close()
    monkeypatch.setattr(processes.sys, "executable", "/bin/false")
    model = _model("cnn")
    one, two = DataParallel(model, threads=1), DataParallel(model, threads=2, processes=True)
    x = _images(rng, 3 * parallel.PIECE)
    with nn.no_grad():
        np.testing.assert_array_equal(two(x), one(x))
    assert isinstance(processes.POOL.broken, processes.HelperError)
    assert "helper process stopped" in str(processes.POOL.broken)
    assert not two._processes_possible() and InProcesses(2) not in DataParallel(model)._tuner(False, 3).candidates


def test_two_helpers_give_the_bits_of_one_thread(rng):
    """Three processes (this one and two helpers, whatever the cores): each helper reads its own part of the
    shared inbox and writes its own places of the gradients -- a training step of three chunks, then inference in
    six pieces, with the one-thread numbers."""
    parallel.set_num_threads(3)
    sizes = [150]
    batches, labels = [_images(rng, n) for n in sizes], [rng.integers(0, 10, n) for n in sizes]
    (state, losses, three), (one_state, one_losses, _) = (_train("cnn-bn", way, batches, labels)
                                                          for way in [(3, True), (1, False)])
    assert three._step.helpers and three.threads == 3
    assert losses == one_losses
    for name, value in one_state.items():
        np.testing.assert_array_equal(state[name], value, err_msg=name)
    model = _model("cnn")
    one, three = DataParallel(model, threads=1), DataParallel(model, threads=3, processes=True)
    with nn.no_grad():
        x = _images(rng, 6 * parallel.PIECE)
        np.testing.assert_array_equal(three(x), one(x))
    assert len(processes.POOL.helpers) >= 2


def test_a_mailbox_carries_small_and_large_messages_both_ways_in_order():
    """Each side's messages arrive in the order sent, through the two slots in turn, and one larger than a slot
    through the socket; a side waiting finds the socket readable (an error reported, or the end) and stops."""
    import socket
    from multiprocessing.connection import Connection

    here, there = socket.socketpair()
    trainer = processes.Mailbox(Connection(here.detach()))
    helper = processes.Mailbox(Connection(there.detach()), [os.dup(fd) for fd in trainer.fds()])
    big = np.arange(processes.Mailbox.SLOT, dtype=np.float32)  # four times a slot
    for k in range(5):  # each side sends, then reads the other's: the protocol of a pass
        trainer.send(("note", k, np.full(3, k, np.float32)))
        # (from a thread: the socket holds less than a large message until the other side reads)
        sending = threading.Thread(target=helper.send, args=(big + k if k == 2 else [k, None],))
        sending.start()
        kind, number, values = helper.receive()
        assert (kind, number) == ("note", k) and values.tolist() == [k] * 3
        answer = trainer.receive()
        if k == 2:
            np.testing.assert_array_equal(answer, big + 2)
        else:
            assert answer == [k, None]
        sending.join()
    # The trainer may send its next message before the helper has read the last (the helper sent its note, then
    # was slower to read): the next slot and a second count.
    trainer.send("first")
    helper.send("its note")
    assert trainer.receive() == "its note"
    trainer.send("second")
    assert helper.receive() == "first" and helper.receive() == "second"
    helper.connection.send((False, "an error"))  # on the socket, while the trainer waits in its mailbox
    with pytest.raises(EOFError):
        trainer.receive()
    assert trainer.connection.recv() == (False, "an error")
    for side in (trainer, helper):
        side.connection.close()
        side.close()


def test_a_meetings_notes_go_through_a_mailbox_as_numbers_and_come_back_equal():
    """Notes -- None, Moments, tuples of arrays -- are written as their numbers (not pickled) and read back with the
    same types, dtypes and bits; anything else a meeting might send, or notes too large for a slot, is pickled."""
    import socket
    from multiprocessing.connection import Connection

    from npconv.engine.batchnorm import Moments

    here, there = socket.socketpair()
    trainer = processes.Mailbox(Connection(here.detach()))
    helper = processes.Mailbox(Connection(there.detach()), [os.dup(fd) for fd in trainer.fds()])
    rng = np.random.default_rng(0)
    forward = [Moments(9800, rng.random(32, dtype=np.float32), rng.random(32, dtype=np.float32)), None]
    backward = [None, (rng.random(16, dtype=np.float32), rng.random(16))]
    odd = [np.ones((2, 3), np.float32), None]  # not a note: pickled
    swapped = [(np.arange(4, dtype=">f8"), np.array([1, None], dtype=object))]  # not plain numbers: pickled
    for notes in (forward, backward, odd, swapped):
        trainer.send_notes(notes)
        kind, _ = processes._HEAD.unpack_from(trainer.map, trainer._slot(trainer.out, trainer.sent - 1))
        assert kind == (processes._NOTES if notes is forward or notes is backward else processes._PICKLED)
        back = helper.receive()
        assert len(back) == len(notes)
        for mine, theirs in zip(notes, back):
            if mine is None:
                assert theirs is None
            elif isinstance(mine, Moments):
                assert type(theirs) is Moments and theirs.count == mine.count and type(theirs.count) is int
                for a, b in ((mine.total, theirs.total), (mine.squares, theirs.squares)):
                    assert b.dtype == a.dtype and b.tobytes() == a.tobytes() and b.flags.writeable
            else:
                assert type(theirs) is type(mine)
                pairs = zip(mine, theirs) if isinstance(mine, tuple) else [(mine, theirs)]
                for a, b in pairs:
                    assert b.dtype == a.dtype and b.shape == a.shape and b.tobytes() == a.tobytes()
        helper.send("read")  # the protocol of a pass: each side reads the other's before it sends again
        assert trainer.receive() == "read"
    assert processes._write_notes(trainer.map, 0, 100, forward) is None  # does not fit: pickled instead
    for side in (trainer, helper):
        side.connection.close()
        side.close()


def test_the_helpers_cpu_time_is_counted_as_this_processs_own(rng):
    """The tuner's CoreMeter counts the helpers' CPU time as this process's: a helper computing is not another
    program keeping a core busy."""
    model = _model("cnn-bn")
    net = DataParallel(model, threads=2, processes=True)
    before = processes.POOL.cpu_seconds()
    x = _images(rng, 100)
    for _ in range(20):
        y = net(x)
        net.backward(np.ones_like(y) / y.size, input_grad=False)
    assert processes.POOL.cpu_seconds() > before
    assert net._meter.helpers() > before  # what the meter reads


def test_a_piece_queue_hands_each_piece_to_one_reader_and_ends_each_reader_once():
    """Two readers of one queue (a thread here stands for a helper process: the pipe is the same) take 20,000
    pieces -- more numbers than the pipe holds, so putting them waits for the readers -- each piece once, each
    reader stopping at its own end, and nothing is left in the pipe."""
    queue = processes.PieceQueue()
    try:
        taken = [[], []]
        other = threading.Thread(target=lambda: taken[1].extend(queue.take()))
        other.start()
        putter = threading.Thread(target=lambda: (queue.put(list(range(20_000))), queue.end(2)))
        putter.start()
        taken[0].extend(queue.take())
        other.join()
        putter.join()
        assert sorted(taken[0] + taken[1]) == list(range(20_000))
        assert taken[0] and taken[1], "one reader took every piece"
        os.set_blocking(queue.fd, False)
        with pytest.raises(BlockingIOError):
            os.read(queue.fd, 4)
    finally:
        queue.close()


def test_a_helper_takes_the_pieces_this_process_is_too_slow_for(rng, apart, monkeypatch):
    """An inference pass hands its pieces to whichever process is free: with this process's pieces slowed down
    the helper computes most of eight (dealt out in turn it would compute four), and the outputs are the bits of
    one thread."""
    import time

    model = _model("cnn")
    one, two = DataParallel(model, threads=1), DataParallel(model, threads=2, processes=True)
    x = _images(rng, 8 * parallel.PIECE)
    collected = []
    collect = processes.Helper.collect

    def counting(helper):
        message = collect(helper)
        collected.append(len(message))
        return message

    with nn.no_grad():
        expected = one(x)
        two(x)  # the helper starts and gets the model
        forward = two.chain.forward
        monkeypatch.setattr(two.chain, "forward", lambda piece: (time.sleep(0.05), forward(piece))[1])
        monkeypatch.setattr(processes.Helper, "collect", counting)
        np.testing.assert_array_equal(two(x), expected)
    assert apart == [1, 1] and two.threads == 2
    assert collected[-1] >= 6, f"the helper computed {collected[-1]} of 8 pieces"


def test_a_pass_stopped_before_its_pieces_are_handed_out_leaves_no_helper_waiting(rng, monkeypatch):
    """Ctrl-C after the helper was told of an inference pass but before any piece was handed out: the helper, waiting
    for a piece, sees the pool's queue close and ends at once (not after the 5 s a helper is given to end); the
    next pass starts a new helper and gives the one-thread bits."""
    import time

    model = _model("cnn")
    one, two = DataParallel(model, threads=1), DataParallel(model, threads=2, processes=True)
    x = _images(rng, 3 * parallel.PIECE)
    with nn.no_grad():
        two(x)
        helper = processes.POOL.helpers[0]

        def interrupted(numbers):
            raise KeyboardInterrupt

        monkeypatch.setattr(processes.POOL.queue, "put", interrupted)
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            two(x)
        assert time.monotonic() - started < 3, "the helper was left waiting for a piece"
        assert helper.process.poll() is not None and processes.POOL.helpers == []
        np.testing.assert_array_equal(two(x), one(x))
    assert two.threads == 2 and processes.POOL.helpers
