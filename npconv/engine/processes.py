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
  model's current values are copied at every forward (those of the layers before the
  first meeting before the helpers are told to start, the others just after) -- so
  whatever changed them (the optimizer, ``load_state_dict``) the helper computes with
  the same values;
* a pass sends each helper its chunks (their bytes, not pickled); the stages
  (:func:`~npconv.engine.parallel.forward_stages`, :func:`~npconv.engine.parallel.backward_stages`)
  run in every process at once; at each meeting every process sends its chunks'
  notes (a batch norm's moments or gradient sums: a few numbers per channel) and
  runs the meeting itself on all of them, in chunk order -- the same numbers in
  every process; at the end a helper sends its chunks' results. A pass's messages
  go through shared memory (:class:`Mailbox`), not the socket. Its chunks'
  parameter gradients are computed straight into shared memory, where
  DataParallel adds them to the model's in chunk order;
* an inference pass (nothing kept, no meeting) is not cut up in advance: every
  piece is put in shared memory and each process takes the next piece not yet
  taken (:class:`PieceQueue`), so a core that runs slower -- another program on
  it, a busier neighbour -- simply computes fewer pieces (:func:`run_shared`).

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
import io
import itertools
import mmap
import os
import pickle
import select
import signal
import socket
import struct
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
from .batchnorm import Moments, pooled
from .stages import (backward_stages, batch_statistics, chain_per_chunk, cut_at_batch_norms, forward_stages,
                     run_alone, summed)


class HelperError(RuntimeError):
    """A helper process failed or stopped; the pass it was in is lost, and later passes run on threads."""


def available():
    """Whether helper processes can run here: Linux (its ``eventfd``, :class:`Mailbox`) and an interpreter with the
    lock (without it, threads already run Python at once)."""
    lock = getattr(sys, "_is_gil_enabled", lambda: True)()
    return hasattr(os, "eventfd") and lock and bool(sys.executable)


def _aligned(nbytes):
    """``nbytes`` rounded up to a whole number of 64-byte cache lines: where the next array in shared memory starts."""
    return -(-nbytes // 64) * 64


class SharedMemory:
    """``size`` bytes of memory that several processes map: an anonymous file (``memfd_create``, or a temporary
    file unlinked at once), so nothing is ever left in the file system.

    ``SharedMemory(size)`` makes it; its descriptor :attr:`fd` goes to the other processes (``pass_fds``, or
    :meth:`Helper.send_fd` over their sockets) and is closed by :meth:`close_fd` once they have it.
    ``SharedMemory(size, fd)`` maps another process's (and closes ``fd``). :attr:`map` is the mapping.
    """

    def __init__(self, size, fd=None):
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

    def close_fd(self):
        """Close the descriptor: the memory stays mapped in every process that has it, and goes with the last."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class SharedArrays(SharedMemory):
    """Arrays of the given ``(shape, dtype)`` specs in one :class:`SharedMemory` (each 64-byte aligned):
    ``SharedArrays(specs)`` makes it, ``SharedArrays(specs, fd)`` maps another process's. ``arrays`` are the views.
    """

    def __init__(self, specs, fd=None):
        offsets, size = [], 0
        for shape, dtype in specs:
            offsets.append(size)
            size += _aligned(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
        super().__init__(max(size, 64), fd)
        self.arrays = [np.ndarray(shape, dtype, buffer=self.map, offset=offset)
                       for (shape, dtype), offset in zip(specs, offsets)]


class PieceQueue:
    """The pieces of an inference pass, handed out one at a time to whichever process asks first: a pipe holding
    the pieces' numbers, which this process writes and every process of the pass reads (:meth:`take`).

    The kernel reads a pipe for one reader at a time, so no two processes are handed the same piece, and a write
    of at most ``PIPE_BUF`` bytes lands whole, so a number is never read in halves. After the numbers come as
    many ends as there are readers: each reader stops at its first, and the pipe is empty when the pass is done.
    ``PieceQueue()`` makes one (the write end stays here); ``PieceQueue(fd)`` is a helper's, reading ``fd``.
    """

    _NUMBER = struct.Struct("<i")
    _END = -1

    def __init__(self, fd=None):
        if fd is None:
            self.fd, self.write_fd = os.pipe()  # not inherited: a helper is passed the read end alone
        else:
            self.fd, self.write_fd = fd, None

    def put(self, numbers):
        """Hand out the pieces ``numbers`` (a reader gets them in this order)."""
        per_write = select.PIPE_BUF // self._NUMBER.size
        for start in range(0, len(numbers), per_write):
            part = numbers[start : start + per_write]
            os.write(self.write_fd, struct.pack(f"<{len(part)}i", *part))

    def end(self, readers):
        """The pieces are all handed out: an end for each of ``readers`` processes."""
        self.put([self._END] * readers)

    def take(self):
        """The pieces this process is handed, one at a time, until its end (each waits for the next number)."""
        while True:
            data = os.read(self.fd, self._NUMBER.size)
            if len(data) < self._NUMBER.size:  # the pipe's writer ended
                raise EOFError("the process that hands out the pieces ended")
            (number,) = self._NUMBER.unpack(data)
            if number == self._END:
                return
            yield number

    def close(self):
        for fd in (self.fd, self.write_fd):
            if fd is not None:
                os.close(fd)
        self.fd = self.write_fd = None


def _state(model):
    """The model's parameters and buffers (their ``Parameter``/``Buffer`` objects) in ``state_dict`` order."""
    return [value for _, value in model._named(nn.module._State)]


#: Seconds a process watches its :class:`Mailbox` before it sleeps on it: waking a sleeping process (on a virtual
#: machine, its idle core) takes longer than most meetings wait (docs/performance.md, "helper processes").
WATCH = 0.002


class _Pickler(pickle.Pickler):
    """A pickler that writes a NumPy array as its dtype, shape and bytes: faster than NumPy's own way for the
    small arrays of a meeting's notes (docs/performance.md, "what a message costs")."""

    def reducer_override(self, obj):
        if type(obj) is np.ndarray and not obj.dtype.hasobject:  # (objects: NumPy's own way)
            return _array, (obj.dtype.str, obj.shape, obj.tobytes())
        return NotImplemented


def _array(dtype, shape, data):
    return np.frombuffer(data, dtype).reshape(shape).copy()  # a copy: writable, and not tied to the message


def _dumps(message):
    out = io.BytesIO()
    _Pickler(out, pickle.HIGHEST_PROTOCOL).dump(message)
    return out.getbuffer()


#: A message's head in its slot: how it is written (:data:`_PICKLED`, :data:`_NOTES`, or :data:`_BY_SOCKET`: not in
#: the slot, on the socket) and its size in bytes.
_HEAD = struct.Struct("<qq")
_PICKLED, _NOTES, _BY_SOCKET = 0, 1, 2

#: A note's head (what it is: None, Moments or a tuple; its count or its length), an array's (its dtype's character
#: code and its length).
_ITEM = struct.Struct("<qq")
_NONE, _MOMENTS, _TUPLE = 0, 1, 2


def _write_notes(memory, start, stop, notes):
    """Write ``notes`` into ``memory[start:stop]`` as numbers: each note's head, then its arrays (each a head and its
    bytes). Returns where they end; None (what was written does not count) if they are not such notes or do not
    fit."""
    if type(notes) is not list:
        return None
    pos = start
    for note in notes:
        if note is None:
            head, arrays = (_NONE, 0), ()
        elif type(note) is Moments and type(note.count) is int:
            head, arrays = (_MOMENTS, note.count), (note.total, note.squares)
        elif type(note) is tuple:
            head, arrays = (_TUPLE, len(note)), note
        else:
            return None
        if pos + _ITEM.size > stop:
            return None
        _ITEM.pack_into(memory, pos, *head)
        pos += _ITEM.size
        for a in arrays:
            plain = (type(a) is np.ndarray and a.ndim == 1 and a.flags.c_contiguous
                     and a.dtype.isbuiltin == 1 and not a.dtype.hasobject)  # a native number type: its char says it
            if not plain or pos + _ITEM.size + a.nbytes > stop:
                return None
            _ITEM.pack_into(memory, pos, ord(a.dtype.char), len(a))
            pos += _ITEM.size
            memory[pos : pos + a.nbytes] = a.data.cast("B")
            pos += a.nbytes
    return pos


def _read_notes(memory, pos, size):
    """The notes :func:`_write_notes` wrote in the ``size`` bytes from ``pos`` on (their arrays copied out)."""
    stop, notes = pos + size, []

    def array():
        nonlocal pos
        code, length = _ITEM.unpack_from(memory, pos)
        pos += _ITEM.size
        a = np.frombuffer(memory, chr(code), length, pos).copy()
        pos += a.nbytes
        return a

    while pos < stop:
        kind, number = _ITEM.unpack_from(memory, pos)
        pos += _ITEM.size
        if kind == _NONE:
            notes.append(None)
        elif kind == _MOMENTS:
            notes.append(Moments(number, array(), array()))
        else:
            notes.append(tuple(array() for _ in range(number)))
    return notes


class Mailbox:
    """A pass's messages between this process and one helper -- a meeting's notes, a chunk's result -- through
    shared memory, each announced by an ``eventfd``.

    A message through a socket costs system calls on both sides and the other side's ``poll``, twice per meeting;
    one here costs a copy and a counter (docs/performance.md, "what a message costs"). Each direction has two
    slots of :data:`SLOT` bytes, used in turn: a side sends its next message only after it has read the other's
    previous one, so the slot it writes has been read. The counter (``EFD_SEMAPHORE``: one count per message)
    is written after the message and read before it, through the kernel, which orders the two in memory on
    every CPU. A meeting's notes are written as their numbers (:meth:`send_notes`), anything else pickled. A
    message larger than a slot goes through the socket, announced the same way. The socket stays
    the way to send a model, a descriptor or an error: a side waiting here that finds it readable stops waiting.
    """

    #: Bytes per slot: a meeting's notes (a few numbers per channel and chunk) fit many times over.
    SLOT = 64 << 10

    def __init__(self, connection, fds=None):
        """This process's side of a new mailbox (``fds`` None), or a helper's side of the mailbox whose
        descriptors (:meth:`fds`) it was given."""
        self.connection = connection
        self.sent = self.read = 0  # messages so far each way: which slot is next
        if fds is None:
            flags = os.EFD_SEMAPHORE | os.EFD_NONBLOCK | os.EFD_CLOEXEC  # the helper gets them by pass_fds
            self.events = [os.eventfd(0, flags), os.eventfd(0, flags)]  # to the helper, from the helper
            self.memory = SharedMemory(4 * self.SLOT)
            self.out, self.into = 0, 1
        else:
            memory, *self.events = fds
            self.memory = SharedMemory(4 * self.SLOT, memory)
            self.out, self.into = 1, 0
        self.map = self.memory.map  # slot k of direction d: bytes (2d + k) * SLOT on; a head (_HEAD), then the message
        self.sleep = select.poll()  # on the counter and the socket (poll: no limit on descriptor numbers)
        self.sleep.register(self.events[self.into], select.POLLIN)
        self.sleep.register(connection.fileno(), select.POLLIN)

    def fds(self):
        """The descriptors a helper's side is made from: the memory and the two counters."""
        return [self.memory.fd, *self.events]

    def _slot(self, direction, number):
        return (2 * direction + number % 2) * self.SLOT

    def send(self, message):
        """Send ``message`` (pickled; through the socket if it does not fit in a slot)."""
        data = _dumps(message)
        fits = len(data) <= self.SLOT - _HEAD.size
        start = self._slot(self.out, self.sent)
        _HEAD.pack_into(self.map, start, _PICKLED if fits else _BY_SOCKET, len(data))
        if fits:
            self.map[start + _HEAD.size : start + _HEAD.size + len(data)] = data
        self._announce()
        if not fits:
            self.connection.send_bytes(data)

    def send_notes(self, notes):
        """Send a meeting's notes -- a list of None, :class:`~npconv.engine.batchnorm.Moments` and tuples of arrays --
        as their numbers, without pickling (a meeting waits for it; docs/performance.md, "what a message costs").
        Anything else, or too large for a slot, is sent as :meth:`send` sends it."""
        start = self._slot(self.out, self.sent)
        end = _write_notes(self.map, start + _HEAD.size, start + self.SLOT, notes)
        if end is None:
            return self.send(notes)
        _HEAD.pack_into(self.map, start, _NOTES, end - start - _HEAD.size)
        self._announce()

    def _announce(self):
        self.sent += 1
        os.eventfd_write(self.events[self.out], 1)

    def receive(self):
        """The other side's next message: watched for :data:`WATCH` seconds, then slept on. Raises EOFError
        if the socket becomes readable first (the other side ended, or reports an error: the caller reads it)."""
        event = self.events[self.into]
        end = time.perf_counter() + WATCH
        while True:
            try:
                os.eventfd_read(event)
                break
            except BlockingIOError:
                if time.perf_counter() < end:
                    continue
            if event not in dict(self.sleep.poll()):
                raise EOFError
        start = self._slot(self.into, self.read)
        self.read += 1
        kind, size = _HEAD.unpack_from(self.map, start)
        start += _HEAD.size
        if kind == _NOTES:
            return _read_notes(self.map, start, size)
        return pickle.loads(self.map[start : start + size] if kind == _PICKLED else self.connection.recv_bytes())

    def close(self):
        for fd in self.events:
            os.close(fd)
        self.events = []
        self.memory.close_fd()  # the memory goes with the last view of it


class Helper:
    """One helper process and the socket to it, in the process that started it; it reads the pool's
    :class:`PieceQueue` ``queue``."""

    def __init__(self, queue):
        here, there = socket.socketpair()
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this npconv's folder
        start = f"import sys; sys.path.insert(0, {root!r}); from npconv.engine.processes import serve; serve()"
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1")  # a chunk's BLAS runs on one thread, as in a thread
        self.errors = tempfile.TemporaryFile()  # the helper's stderr, for the message if it stops
        self.connection = Connection(os.dup(here.fileno()))
        self.mailbox = Mailbox(self.connection)
        fds = [there.fileno(), queue.fd, *self.mailbox.fds()]
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", start, *map(str, fds)], pass_fds=fds, env=env,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.errors)
        except BaseException:
            here.close()
            self.connection.close()
            self.mailbox.close()
            self.errors.close()
            raise
        finally:
            there.close()
            self.mailbox.memory.close_fd()  # mapped here, and passed
        self.socket = here  # for descriptors (SCM_RIGHTS); the Connection reads and writes the same socket
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

    def cpu_seconds(self):
        """The helper's CPU time so far (user and system; 0 where ``/proc`` does not tell)."""
        try:
            with open(f"/proc/{self.process.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # after the command's name, which may hold spaces
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
        except (OSError, ValueError, IndexError):
            return 0.0

    def post(self, message, notes=False):
        """Send a message of a pass (:class:`Mailbox`); ``notes``: a meeting's notes (:meth:`Mailbox.send_notes`)."""
        try:
            (self.mailbox.send_notes if notes else self.mailbox.send)(message)
        except (OSError, ValueError):  # a large message goes through the socket, which the helper closed by ending
            raise self._stopped("it no longer takes messages") from None

    def collect(self):
        """The helper's next message of a pass (:class:`Mailbox`); an error it sent is raised as a
        :class:`HelperError`."""
        try:
            return self.mailbox.receive()
        except (EOFError, OSError):  # it wrote to the socket instead: an error, or its end
            self.receive()
            raise self._stopped("it sent a message out of turn") from None

    def receive(self):
        """The helper's next message on the socket; an error it sent is raised as a :class:`HelperError`."""
        try:
            ok, payload = self.connection.recv()
        except (EOFError, OSError):
            raise self._stopped("its socket is closed") from None
        if not ok:
            raise HelperError(f"in a helper process: {payload}")
        return payload

    def close(self):
        self.connection.close()
        self.socket.close()  # the helper sees the end of its input and returns
        self.mailbox.close()
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
        self.queue = None  # PieceQueue: an inference pass's pieces, for this process and every helper
        self.lock = threading.Lock()
        self.broken = None  # the error that stopped the helpers, if one did: they are not started again
        self.pid = os.getpid()
        self.ended_seconds = 0.0  # CPU time of the helpers closed so far
        self._ids = itertools.count()
        atexit.register(self.close)

    def start(self, count):
        """``count`` helpers, started if need be (the start of a Python that imports npconv, once per process)."""
        if self.pid != os.getpid():  # forked: the helpers are the parent's
            self.helpers, self.queue, self.pid = [], None, os.getpid()
        if self.broken is not None:
            raise self.broken
        try:
            if self.queue is None:
                self.queue = PieceQueue()
            while len(self.helpers) < count:
                self.helpers.append(Helper(self.queue))
        except OSError as e:
            raise HelperError(f"cannot start a helper process ({e})") from None
        return self.helpers[:count]

    def stop(self, error):
        """Stop the helpers for good after ``error``: later passes run on threads."""
        self.broken = error
        self.close()

    def new_id(self):
        return next(self._ids)

    def cpu_seconds(self):
        """The CPU time the helpers have used, helpers that ended included (for
        :class:`~npconv.engine.tuning.CoreMeter`: their work is this process's, not another program's)."""
        return self.ended_seconds + sum(helper.cpu_seconds() for helper in self.helpers)

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
        queue, self.queue = self.queue, None
        if self.pid == os.getpid():
            if queue is not None:  # first: a helper waiting for a piece of a pass left half-done reads its end
                queue.close()
            for helper in helpers:
                self.ended_seconds += helper.cpu_seconds()
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

    def helpers(self, count, chunks_each):
        """``count`` helpers holding the model, with room for ``chunks_each`` chunks' gradients each."""
        helpers = POOL.start(count)
        if self.pid != os.getpid():  # forked: the shared memory is the parent's
            self.state, self.gradients, self.inbox, self.shape = None, None, None, (0, 0)
            self.pid = os.getpid()
        if count > self.shape[0] or chunks_each > self.shape[1] or any(self.id not in h.hosted for h in helpers):
            self._send(helpers, (max(count, self.shape[0]), max(chunks_each, self.shape[1])))
        return helpers

    def copy_state(self, state, start, stop=None):
        """Copy ``state[start:stop]`` (the model's parameters and buffers, :func:`_state`) into shared memory, where
        the helpers compute with them."""
        for mine, value in zip(self.state.arrays[start:stop], state[start:stop]):
            np.copyto(mine, value.data)

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
        copied into its part of the shared inbox (made larger, and sent again, when they do not fit).

        The helpers compute with the model's current parameters and buffers (a backward, with those of its forward):
        those the first stage reads are copied into shared memory before the start is sent, the others after it,
        while the helpers start -- they read them after the first meeting, which waits for this process's notes."""
        state, early = _state(self.model), _first_stage_state(self.model)
        self.copy_state(state, 0, early)
        n = len(helpers) + 1
        mine = [chunks[h::n] for h in range(1, n)]
        new = self._room(len(helpers), max(sum(_aligned(c.nbytes) for c in cs) for cs in mine))
        try:
            for helper, cs, room in zip(helpers, mine, self.inbox.arrays):
                helper.post(("forward", self.id, training, grad, _put(room, cs), new, n))
                if new is not None:
                    helper.send_fd(self.inbox.fd)
        finally:
            self.inbox.close_fd()
        self.copy_state(state, early)

    def start_sharing(self, helpers, training, pieces):
        """Start an inference pass whose ``pieces`` this process and the ``helpers`` take one at a time from the
        pool's :class:`PieceQueue` (:func:`run_shared`): the model's current parameters and buffers are copied into
        shared memory, the helpers are told where each piece will be in the shared inbox (any process may take it),
        and each piece is handed out as soon as it is copied there -- a helper starts on the first while the others
        are copied."""
        self.copy_state(_state(self.model), 0)
        layouts = _places(pieces)
        new = self._room(1, sum(_aligned(p.nbytes) for p in pieces))
        try:
            for helper in helpers:
                helper.post(("share", self.id, training, layouts, new))
                if new is not None:
                    helper.send_fd(self.inbox.fd)
        finally:
            self.inbox.close_fd()
        for i, (piece, place) in enumerate(zip(pieces, layouts)):
            np.copyto(_view(self.inbox.arrays[0], *place), piece)
            POOL.queue.put([i])  # after the copy: the pipe's write and read order the two in memory
        POOL.queue.end(len(helpers) + 1)

    def _room(self, areas, need):
        """Make sure the shared inbox has ``areas`` areas of at least ``need`` bytes, making a larger one where it has
        not. Returns a new inbox's layout ``(areas, bytes each)``, sent with the pass; None: the helpers have it."""
        if self.inbox is not None and need <= self.inbox.arrays[0].nbytes and len(self.inbox.arrays) >= areas:
            return None
        new = (areas, 2 * need)
        self.inbox = SharedArrays([((new[1],), np.uint8)] * new[0])
        return new

    def start_backward(self, helpers, counts, input_grad, dys):
        """Start a backward in ``helpers``: each gets the ``dy`` of its chunks (small: the network's outputs) and the
        batch norms' value counts."""
        n = len(helpers) + 1
        for h, helper in enumerate(helpers, 1):
            helper.post(("backward", self.id, counts, input_grad, dys[h::n]))

    def gradients_of(self, h, j):
        """The parameter gradients of helper ``h``'s (0-based) ``j``-th chunk in the last backward."""
        n = len(self.model.parameters())
        start = (h * self.shape[1] + j) * n
        return self.gradients.arrays[start : start + n]


def _places(arrays):
    """Where ``arrays`` go, one after another, in an area of the shared inbox: ``(shape, dtype, offset)`` each."""
    layouts, offset = [], 0
    for a in arrays:
        layouts.append((a.shape, a.dtype, offset))
        offset += _aligned(a.nbytes)
    return layouts


def _view(room, shape, dtype, offset):
    """The array at a place :func:`_places` gave, in ``room`` (an area of the shared inbox)."""
    return np.ndarray(shape, dtype, buffer=room, offset=offset)


def _put(room, arrays):
    """Copy ``arrays`` into ``room`` (an area of the shared inbox) where :func:`_places` says; return the places."""
    layouts = _places(arrays)
    for a, place in zip(arrays, layouts):
        np.copyto(_view(room, *place), a)
    return layouts


def _first_stage_state(model):
    """How many of the model's parameters and buffers (``state_dict`` order) a forward's first stage reads: those of
    the layers before its first meeting (a batch norm in training mode); all of them in a pass without meetings."""
    count = 0
    for layer in layers_of(model):
        if batch_statistics(layer):
            return count
        count += sum(1 for _ in layer._named(nn.module._State))
    return count


def run_apart(stages, values, helpers):
    """A pass's ``stages`` over processes: the calling thread runs chunks ``0, n, 2n, ...`` of every stage, helper
    ``h`` (1 to n - 1) runs chunks ``h, h + n, ...`` in its process, at the same time. At a meeting every process
    gets every chunk's note (:func:`_gather`) and runs the meeting itself, on all of them in chunk order: the same
    numbers everywhere, and a helper waits for one message, not for this process's answer to its own. The helpers'
    values stay in their processes until the last stage, when they send them."""
    count, n = len(values), len(helpers) + 1
    notes, shared = [None] * count, None
    for stage in stages:
        for i in range(0, count, n):
            values[i], notes[i] = stage.task(i, values[i], shared)
        if stage.meet is not None:
            _gather(notes, helpers)
            shared = stage.meet(notes)
    for h, helper in enumerate(helpers, 1):
        values[h::n] = helper.collect()
    return values


def run_shared(chain, pieces, helpers):
    """An inference pass over processes (:meth:`Hosting.start_sharing`): this thread and every helper take the next
    piece not yet taken until none is left, each computing it with a chain of its own -- so a process that runs
    slower computes fewer -- then the helpers send the outputs of theirs. Every piece is computed the same way
    wherever it ran. Returns the outputs in piece order."""
    outputs = [None] * len(pieces)
    for i in POOL.queue.take():
        outputs[i] = chain.forward(pieces[i])
    for helper in helpers:
        for i, y in helper.collect():
            outputs[i] = y
    return outputs


def _gather(notes, helpers):
    """Fill ``notes`` (this process's chunks' notes in place) with the helpers', and send each helper the notes of
    every chunk but its own as soon as they are all here. They are read in helper order, so the last helper's are
    complete before its own are read (with one helper: at once), the others' once every helper's are here."""
    n = len(helpers) + 1

    def send_others(h):
        others = list(notes)
        others[h::n] = [None] * len(others[h::n])
        helpers[h - 1].post(others, notes=True)

    for h, helper in enumerate(helpers, 1):
        if h == n - 1:
            send_others(h)
        notes[h::n] = helper.collect()
    for h in range(1, n - 1):
        send_others(h)


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
        self.n = 2  # processes in the current pass (set by each forward)
        self.inbox = None
        self.places = [gradients[(first + j) * n : (first + j + 1) * n] for j in range(shape[1])]
        self.chain = Chain(kernel_for(layer) for layer in layers_of(model))
        self.replicas = []
        self.chains = []
        self.segments = None
        self.inputs = {}  # chunk j -> the array its input is read into

    def open_inbox(self, new_inbox, connection):
        """Map the inbox the other process made, if the pass says it made one: ``(areas, bytes each)``, its
        descriptor sent on ``connection``."""
        if new_inbox is not None:
            count, room = new_inbox
            self.inbox = SharedArrays([((room,), np.uint8)] * count, _receive_fd(connection))

    def received(self, area, j, shape, dtype, offset, keep):
        """Chunk ``j``'s input, in ``area`` of the inbox: with ``keep`` (a training forward) copied into an array kept
        for it (the inbox is refilled by the next forward, while a backward may still need what the chunk kept);
        else the inbox's own bytes (no backward follows, and the next forward waits for this one's results)."""
        view = _view(self.inbox.arrays[area], shape, dtype, offset)
        if not keep:
            return view
        buffer = self.inputs.get(j)
        if buffer is None or buffer.shape != shape or buffer.dtype != dtype:
            buffer = self.inputs[j] = np.empty(shape, dtype)
        np.copyto(buffer, view)
        return buffer

    def chains_for(self, count, per_chunk):
        """``count`` chains: one per chunk (a training pass keeps each chunk's caches), or the same one."""
        if not per_chunk:
            return [self.chain] * count
        while len(self.replicas) < count - 1:
            self.replicas.append(self.chain.replicate())
        return [self.chain] + self.replicas[: count - 1]


def _forward(hosted, mailbox, training, grad, layouts, new_inbox, n):
    hosted.n = n  # processes in this pass (and its backward): the chunks' places in a meeting's notes
    hosted.open_inbox(new_inbox, mailbox.connection)
    chunks = [hosted.received(hosted.h, j, *layout, keep=grad) for j, layout in enumerate(layouts)]
    hosted.model.train(training)
    hosted.chains = hosted.chains_for(len(chunks), chain_per_chunk(hosted.chain.kernels, grad))
    hosted.segments = cut_at_batch_norms(hosted.chains)
    with contextlib.nullcontext() if grad else nn.no_grad():
        return run_alone(forward_stages(hosted.segments,
                                        lambda segment, notes: pooled(_exchange(hosted, mailbox, notes))), chunks)


def _share(hosted, mailbox, queue, training, layouts, new_inbox):
    """A helper's part of :func:`run_shared`: the pieces it takes, each read where it is in the inbox, as
    ``(piece, output)`` pairs."""
    hosted.open_inbox(new_inbox, mailbox.connection)
    hosted.model.train(training)
    with nn.no_grad():
        return [(i, hosted.chain.forward(hosted.received(0, i, *layouts[i], keep=False))) for i in queue.take()]


def _backward(hosted, mailbox, counts, input_grad, dys):
    for j, chain in enumerate(hosted.chains):  # chunk j's gradients are computed in its place in shared memory
        for p, place in zip(chain.parameters(), hosted.places[j]):
            p.grad = place
            place.fill(0)
    dxs = run_alone(backward_stages(hosted.segments, counts, input_grad,
                                    lambda notes: summed(_exchange(hosted, mailbox, notes))), dys)
    return dxs if input_grad else [None] * len(dys)


def _receive_fd(connection):
    """A descriptor sent by :meth:`Helper.send_fd`."""
    with socket.socket(fileno=os.dup(connection.fileno())) as sock:
        _, fds, _, _ = socket.recv_fds(sock, 1, 1)
    return fds[0]


def _exchange(hosted, mailbox, notes):
    """A meeting, in a helper: send its chunks' notes, return every chunk's, in chunk order (:func:`_gather`)."""
    mailbox.send_notes(notes)
    everyone = mailbox.receive()
    everyone[hosted.h + 1 :: hosted.n] = notes
    return everyone


def serve(fds=None):
    """A helper's life: answer the messages of the process that started it until it closes the socket.
    ``fds``: the socket's descriptor, the :class:`PieceQueue`'s and the :class:`Mailbox`'s (default: the command
    line's arguments)."""
    # Ctrl-C reaches the whole terminal, a service manager's SIGTERM the whole group: the trainer stops at a safe
    # point (npconv.train.interrupt), still needing us, and ends us by closing the socket.
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, signal.SIG_IGN)
    socket_fd, queue_fd, *mailbox_fds = [int(fd) for fd in sys.argv[1:]] if fds is None else fds
    connection = Connection(socket_fd)
    queue = PieceQueue(queue_fd)
    mailbox = Mailbox(connection, mailbox_fds)
    threadpool_limits(1, user_api="blas")  # as in DataParallel's chunks: BLAS on one thread, the same numbers
    keep_freed_memory()
    models = {}
    while True:
        try:
            message = mailbox.receive()  # a pass
        except EOFError:  # the socket instead: a model to hold or to drop, or the end
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
                connection.send((True, None))
            elif kind == "drop":
                models.pop(model_id, None)
            else:  # a pass
                hosted = models[model_id]
                with using(hosted.plan):
                    if kind == "share":
                        mailbox.send(_share(hosted, mailbox, queue, *rest))
                    else:
                        mailbox.send((_forward if kind == "forward" else _backward)(hosted, mailbox, *rest))
        except EOFError:  # the trainer closed the socket during a pass
            return
        except Exception as e:  # to the trainer, which raises it (and stops the helpers)
            connection.send((False, f"{type(e).__name__}: {e}"))
