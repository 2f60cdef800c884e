"""Helper processes: chunks of a batch computed in other processes, where the interpreter lock holds threads back.

On a Python with the interpreter lock (the GIL) only one thread runs Python at a
time. A training step makes a few thousand NumPy calls per chunk; a thread that
comes back from one (a BLAS product, a ufunc) must take the lock back before the
next, and two threads keep waiting for each other (docs/performance.md, "the
interpreter lock"). A **helper** is another Python process, with its own
interpreter and its own lock, to which
:class:`~npconv.engine.parallel.DataParallel` hands whole chunks, when its
:class:`~npconv.engine.tuning.ThreadTuner` finds that faster than threads on this
machine (:class:`~npconv.engine.tuning.InProcesses`):

* a helper is sent a copy of the model (pickled) and the run's plan once, and
  computes with kernels of its own copy; the parameters and buffers it computes
  with are arrays in shared memory (a file both processes map), into which the
  model's current values are copied before every forward -- so whatever changed
  them (the optimizer, ``load_state_dict``) the helper computes with the same values;
* a pass sends each helper its chunks (their bytes, not pickled); the stages
  (:func:`~npconv.engine.parallel.forward_stages`, :func:`~npconv.engine.parallel.backward_stages`)
  run in every process at once; at each meeting a helper sends its chunks' notes
  (a batch norm's moments or gradient sums: a few numbers per channel) and waits
  for what the meeting gives; at the end it sends its chunks' results. Its chunks'
  parameter gradients are computed straight into shared memory, where
  DataParallel adds them to the model's in chunk order.

A helper computes a chunk exactly as a thread would -- the same kernels, the same
plan, BLAS on one thread -- so the numbers do not depend on where a chunk ran.
Helpers are started with ``python -c`` (not :mod:`multiprocessing`, which would
import a user's script again in each), ignore Ctrl-C and SIGTERM (the process that
started them stops at a safe point, then stops them), and end when that process
closes their socket or ends. A helper that fails stops them all for the rest of
the process: the pass raises :class:`HelperError`, and later passes run on threads.
"""

import atexit
import contextlib
import itertools
import mmap
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection

import numpy as np

from threadpoolctl import threadpool_limits

from .. import nn
from .chain import Chain, kernel_for, layers_of
from .memory import keep_freed_memory
from .plan import using
from .stages import backward_stages, chain_per_chunk, cut_at_batch_norms, forward_stages, run_alone


class HelperError(RuntimeError):
    """A helper process failed or stopped; the pass it was in is lost, and later passes run on threads."""


def available():
    """Whether helper processes can run here: a POSIX system and an interpreter with the lock (without it,
    threads already run Python at once)."""
    lock = getattr(sys, "_is_gil_enabled", lambda: True)()
    return os.name == "posix" and lock and bool(sys.executable)


def _aligned(nbytes):
    """``nbytes`` rounded up to a whole number of 64-byte cache lines: where the next array in shared memory starts."""
    return -(-nbytes // 64) * 64


class SharedArrays:
    """Arrays of the given ``(shape, dtype)`` specs in one piece of memory that several processes map (64-byte
    aligned).

    ``SharedArrays(specs)`` makes it: an anonymous file (``memfd_create``, or a temporary file unlinked at once),
    so nothing is ever left in the file system; its descriptor :attr:`fd` goes to the other processes over their
    sockets (:meth:`Helper.send_fd`) and is closed by :meth:`close_fd` once they have it.
    ``SharedArrays(specs, fd)`` maps another process's. ``arrays`` are the views.
    """

    def __init__(self, specs, fd=None):
        offsets, size = [], 0
        for shape, dtype in specs:
            offsets.append(size)
            size += _aligned(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
        size = max(size, 64)
        mine = fd is None
        if mine:
            if hasattr(os, "memfd_create"):
                fd = os.memfd_create("npconv")
            else:
                fd, path = tempfile.mkstemp(prefix="npconv-")
                os.unlink(path)
            try:
                os.ftruncate(fd, size)
            except BaseException:
                os.close(fd)
                raise
        try:
            self.map = mmap.mmap(fd, size)
        finally:
            if not mine:
                os.close(fd)
        self.fd = fd if mine else None
        self.arrays = [np.ndarray(shape, dtype, buffer=self.map, offset=offset)
                       for (shape, dtype), offset in zip(specs, offsets)]

    def close_fd(self):
        """Close the descriptor: the memory stays mapped in every process that has it, and goes with the last."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _state(model):
    """The model's parameters and buffers (their ``Parameter``/``Buffer`` objects) in ``state_dict`` order."""
    return [value for _, value in model._named(nn.module._State)]


#: Seconds a process watches a socket before it sleeps on it: waking a sleeping process (on a virtual machine,
#: its idle core) takes longer than most meetings wait (docs/performance.md, "helper processes").
WATCH = 0.002


def _wait(connection):
    """Return once ``connection`` has a message, or after :data:`WATCH` seconds."""
    end = time.perf_counter() + WATCH
    while not connection.poll(0) and time.perf_counter() < end:
        pass


class Helper:
    """One helper process and the socket to it, in the process that started it."""

    def __init__(self):
        here, there = socket.socketpair()
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this npconv's folder
        start = f"import sys; sys.path.insert(0, {root!r}); from npconv.engine.processes import serve; serve()"
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1")  # a chunk's BLAS runs on one thread, as in a thread
        self.errors = tempfile.TemporaryFile()  # the helper's stderr, for the message if it stops
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", start, str(there.fileno())], pass_fds=[there.fileno()], env=env,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.errors)
        except BaseException:
            here.close()
            self.errors.close()
            raise
        finally:
            there.close()
        self.socket = here  # for descriptors (SCM_RIGHTS); the Connection below reads and writes the same socket
        self.connection = Connection(os.dup(here.fileno()))
        self.hosted = set()  # ids of the models it holds

    def _stopped(self, why):
        """The error for a helper that stopped: ``why`` (in words), and the last line it wrote, if any."""
        with contextlib.suppress(OSError, ValueError):
            self.errors.seek(0)
            lines = self.errors.read().decode(errors="replace").strip().splitlines()
            if lines:
                why += f": {lines[-1]}"
        return HelperError(f"a helper process stopped ({why})")

    def send(self, message):
        try:
            self.connection.send(message)
        except (OSError, ValueError):
            raise self._stopped("its socket is closed") from None

    def send_fd(self, fd):
        """Pass a file descriptor to the helper (it reads it with :func:`_receive_fd` when a message says so)."""
        try:
            socket.send_fds(self.socket, [b"F"], [fd])
        except (OSError, ValueError):
            raise self._stopped("its socket is closed") from None

    def receive(self):
        """The helper's next message; an error it sent is raised as a :class:`HelperError`."""
        try:
            _wait(self.connection)
            ok, payload = self.connection.recv()
        except (EOFError, OSError):
            raise self._stopped("its socket is closed") from None
        if not ok:
            raise HelperError(f"in a helper process: {payload}")
        return payload

    def close(self):
        self.connection.close()
        self.socket.close()  # the helper sees the end of its input and returns
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.errors.close()


class Pool:
    """This process's helpers, started when first needed and shared by every model.

    One pass at a time uses them (:attr:`lock`; a pass that cannot have it runs on threads). A child made by
    ``fork`` starts helpers of its own: those of its parent answer the parent.
    """

    def __init__(self):
        self.helpers = []
        self.lock = threading.Lock()
        self.broken = None  # the error that stopped the helpers, if one did: they are not started again
        self.pid = os.getpid()
        self._ids = itertools.count()
        atexit.register(self.close)

    def start(self, count):
        """``count`` helpers, started if need be (the start of a Python that imports npconv, once per process)."""
        if self.pid != os.getpid():  # forked: the helpers are the parent's
            self.helpers, self.pid = [], os.getpid()
        if self.broken is not None:
            raise self.broken
        try:
            while len(self.helpers) < count:
                self.helpers.append(Helper())
        except OSError as e:
            raise HelperError(f"cannot start a helper process ({e})") from None
        return self.helpers[:count]

    def stop(self, error):
        """Stop the helpers for good after ``error``: later passes run on threads."""
        self.broken = error
        self.close()

    def new_id(self):
        return next(self._ids)

    def drop(self, model_id):
        """Tell the helpers to forget a model that is gone (unless a pass is using them: then they keep it)."""
        if self.pid == os.getpid() and self.lock.acquire(blocking=False):
            try:
                for helper in self.helpers:
                    if model_id in helper.hosted:
                        helper.hosted.discard(model_id)
                        helper.send(("drop", model_id))
            except HelperError:
                pass
            finally:
                self.lock.release()

    def close(self):
        helpers, self.helpers = self.helpers, []
        if self.pid == os.getpid():
            for helper in helpers:
                helper.close()


POOL = Pool()


class Hosting:
    """A model as the helpers hold it: its id, and its state and its chunks' gradients in shared memory.

    The gradients have :attr:`shape` = ``(helpers, places)``: helper ``h``'s ``j``-th chunk of a pass writes its
    gradients to place ``h * places + j``.
    """

    def __init__(self, model, plan):
        self.model = model
        self.plan = plan
        self.id = POOL.new_id()
        self.state = None      # SharedArrays: the model's parameters and buffers
        self.gradients = None  # SharedArrays: helpers * places places, one array per parameter in each
        self.shape = (0, 0)
        self.inbox = None      # SharedArrays: per helper, room for the inputs of its chunks in a pass
        self.pid = os.getpid()

    def helpers(self, count, chunks_each, fresh=True):
        """``count`` helpers holding the model, with room for ``chunks_each`` chunks' gradients each and, if
        ``fresh``, the current values of its parameters and buffers (a forward; a backward computes with the
        values of its forward)."""
        helpers = POOL.start(count)
        if self.pid != os.getpid():  # forked: the shared memory is the parent's
            self.state, self.gradients, self.inbox, self.shape = None, None, None, (0, 0)
            self.pid = os.getpid()
        if count > self.shape[0] or chunks_each > self.shape[1] or any(self.id not in h.hosted for h in helpers):
            self._send(helpers, (max(count, self.shape[0]), max(chunks_each, self.shape[1])))
        if fresh:
            for mine, value in zip(self.state.arrays, _state(self.model)):
                np.copyto(mine, value.data)
        return helpers

    def _send(self, helpers, shape):
        """Send the model to ``helpers`` with new shared memory: for its state, and for ``shape`` = (helpers,
        places) chunks' gradients."""
        state = _state(self.model)
        specs = [(p.data.shape, p.data.dtype) for p in self.model.parameters()]
        self.state = SharedArrays([(v.data.shape, v.data.dtype) for v in state])
        self.gradients = SharedArrays(specs * (shape[0] * shape[1]))
        self.shape, self.inbox = shape, None
        try:
            for helper in POOL.helpers:
                helper.hosted.discard(self.id)
            model = pickle.dumps(self.model)
            for h, helper in enumerate(helpers):
                helper.send(("model", self.id, model, self.plan, shape, h))
                helper.send_fd(self.state.fd)
                helper.send_fd(self.gradients.fd)
                helper.receive()
                helper.hosted.add(self.id)
        finally:
            self.state.close_fd()
            self.gradients.close_fd()

    def start_forward(self, helpers, training, grad, chunks):
        """Start a forward in ``helpers``: helper ``h`` (1-based) gets chunks ``h, h + n, ...`` (n = helpers + 1),
        copied into its part of the shared inbox (made larger, and sent again, when they do not fit)."""
        n = len(helpers) + 1
        mine = [chunks[h::n] for h in range(1, n)]
        need = max(sum(_aligned(c.nbytes) for c in cs) for cs in mine)
        # A new inbox is sent with its layout: (helpers, bytes each); None: the helpers have it.
        new = None
        if self.inbox is None or need > self.inbox.arrays[0].nbytes or len(self.inbox.arrays) < len(helpers):
            new = (len(helpers), 2 * need)
            self.inbox = SharedArrays([((new[1],), np.uint8)] * new[0])
        try:
            for helper, cs, room in zip(helpers, mine, self.inbox.arrays):
                layouts, offset = [], 0
                for c in cs:
                    np.copyto(np.ndarray(c.shape, c.dtype, buffer=room, offset=offset), c)
                    layouts.append((c.shape, c.dtype, offset))
                    offset += _aligned(c.nbytes)
                helper.send(("forward", self.id, training, grad, layouts, new))
                if new is not None:
                    helper.send_fd(self.inbox.fd)
        finally:
            self.inbox.close_fd()

    def start_backward(self, helpers, counts, input_grad, dys):
        """Start a backward in ``helpers``: each gets the ``dy`` of its chunks (small: the network's outputs) and the
        batch norms' value counts."""
        n = len(helpers) + 1
        for h, helper in enumerate(helpers, 1):
            helper.send(("backward", self.id, counts, input_grad, dys[h::n]))

    def gradients_of(self, h, j):
        """The parameter gradients of helper ``h``'s (0-based) ``j``-th chunk in the last backward."""
        n = len(self.model.parameters())
        start = (h * self.shape[1] + j) * n
        return self.gradients.arrays[start : start + n]


def run_apart(stages, values, helpers):
    """A pass's ``stages`` over processes: the calling thread runs chunks ``0, n, 2n, ...`` of every stage, helper
    ``h`` (1 to n - 1) runs chunks ``h, h + n, ...`` in its process, at the same time; at a meeting each helper
    sends its chunks' notes, the meeting runs here on all of them in chunk order, and what it gives goes back to
    every helper. The helpers' values stay in their processes until the last stage, when they send them."""
    count, n = len(values), len(helpers) + 1
    notes, shared = [None] * count, None
    for stage in stages:
        for i in range(0, count, n):
            values[i], notes[i] = stage.task(i, values[i], shared)
        if stage.meet is not None:
            for h, helper in enumerate(helpers, 1):
                notes[h::n] = helper.receive()
            shared = stage.meet(notes)
            for helper in helpers:
                helper.send(shared)
    for h, helper in enumerate(helpers, 1):
        values[h::n] = helper.receive()
    return values


# --- the helper's side --------------------------------------------------------

class _Hosted:
    """A model in a helper: its copy, computing with parameters and buffers in shared memory, and the chains of
    its chunks."""

    def __init__(self, model, plan, shape, h, state_fd, gradients_fd):
        self.model, self.plan = model, plan
        state = _state(model)
        self.state = SharedArrays([(v.data.shape, v.data.dtype) for v in state], state_fd)
        for value, shared in zip(state, self.state.arrays):
            value.data = shared  # the kernels read these arrays, which the other process fills
        specs = [(p.data.shape, p.data.dtype) for p in model.parameters()]
        gradients = SharedArrays(specs * (shape[0] * shape[1]), gradients_fd).arrays
        first, n = h * shape[1], len(specs)
        self.h = h  # this helper's index: its part of the inbox, its places for gradients
        self.inbox = None
        self.places = [gradients[(first + j) * n : (first + j + 1) * n] for j in range(shape[1])]
        self.chain = Chain(kernel_for(layer) for layer in layers_of(model))
        self.replicas = []
        self.chains = []
        self.segments = None
        self.inputs = {}  # chunk j -> the array its input is read into

    def received(self, j, shape, dtype, offset):
        """Chunk ``j``'s input, copied from the inbox into an array kept for it (the inbox is refilled by the
        next forward, while a backward may still need what the chunk kept)."""
        buffer = self.inputs.get(j)
        if buffer is None or buffer.shape != shape or buffer.dtype != dtype:
            buffer = self.inputs[j] = np.empty(shape, dtype)
        np.copyto(buffer, np.ndarray(shape, dtype, buffer=self.inbox.arrays[self.h], offset=offset))
        return buffer

    def chains_for(self, count, per_chunk):
        """``count`` chains: one per chunk (a training pass keeps each chunk's caches), or the same one."""
        if not per_chunk:
            return [self.chain] * count
        while len(self.replicas) < count - 1:
            self.replicas.append(self.chain.replicate())
        return [self.chain] + self.replicas[: count - 1]


def _forward(hosted, connection, training, grad, layouts, new_inbox):
    if new_inbox is not None:  # (helpers, bytes each), as the other process made it
        count, room = new_inbox
        hosted.inbox = SharedArrays([((room,), np.uint8)] * count, _receive_fd(connection))
    chunks = [hosted.received(j, *layout) for j, layout in enumerate(layouts)]
    hosted.model.train(training)
    hosted.chains = hosted.chains_for(len(chunks), chain_per_chunk(hosted.chain.kernels, grad))
    hosted.segments = cut_at_batch_norms(hosted.chains)
    with contextlib.nullcontext() if grad else nn.no_grad():
        return run_alone(forward_stages(hosted.segments, lambda segment, notes: _exchange(connection, notes)), chunks)


def _backward(hosted, connection, counts, input_grad, dys):
    for j, chain in enumerate(hosted.chains):  # chunk j's gradients are computed in its place in shared memory
        for p, place in zip(chain.parameters(), hosted.places[j]):
            p.grad = place
            place.fill(0)
    dxs = run_alone(backward_stages(hosted.segments, counts, input_grad, lambda notes: _exchange(connection, notes)),
                    dys)
    return dxs if input_grad else [None] * len(dys)


def _receive_fd(connection):
    """A descriptor sent by :meth:`Helper.send_fd`."""
    with socket.socket(fileno=os.dup(connection.fileno())) as sock:
        _, fds, _, _ = socket.recv_fds(sock, 1, 1)
    return fds[0]


def _exchange(connection, notes):
    """A meeting, in a helper: send its chunks' notes, return what the meeting gave."""
    connection.send((True, notes))
    _wait(connection)
    return connection.recv()


def serve(fd=None):
    """A helper's life: answer the messages of the process that started it until it closes the socket."""
    # Ctrl-C reaches the whole terminal, a service manager's SIGTERM the whole group: the trainer stops at a safe
    # point (npconv.train.interrupt), still needing us, and ends us by closing the socket.
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, signal.SIG_IGN)
    connection = Connection(int(sys.argv[1]) if fd is None else fd)
    threadpool_limits(1, user_api="blas")  # as in DataParallel's chunks: BLAS on one thread, the same numbers
    keep_freed_memory()
    models = {}
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            return
        try:
            kind, model_id, *rest = message
            if kind == "model":
                model, plan, shape, h = rest
                models[model_id] = _Hosted(pickle.loads(model), plan, shape, h, _receive_fd(connection),
                                           _receive_fd(connection))
                reply = None
            elif kind == "drop":
                models.pop(model_id, None)
                continue
            else:
                hosted = models[model_id]
                with using(hosted.plan):
                    reply = (_forward if kind == "forward" else _backward)(hosted, connection, *rest)
            connection.send((True, reply))
        except Exception as e:  # to the trainer, which raises it (and stops the helpers)
            connection.send((False, f"{type(e).__name__}: {e}"))
