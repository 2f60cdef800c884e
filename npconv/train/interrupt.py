"""Stopping a run cleanly on Ctrl-C (SIGINT) or SIGTERM.

A training run keeps a checkpoint of its last completed epoch on disk (see
:mod:`npconv.train.checkpoint`). Stopping it must never leave that set of files
half-updated, so a run writes its end-of-epoch files inside
:func:`deferred_interrupts`, and the command line installs
:func:`stop_on_signals`:

* outside a deferred block, SIGINT or SIGTERM raises :class:`Interrupted` at
  once (the unfinished epoch is discarded; resuming repeats it);
* inside one, the signal is remembered and raised when the block ends, so the
  files the block writes are either all from epoch k or all from epoch k + 1.

:class:`Interrupted` is a :class:`KeyboardInterrupt`, so code that already
handles Ctrl-C handles SIGTERM the same way. The exit status it asks for is
the shell's convention, ``128 + signal number``: 130 for SIGINT, 143 for SIGTERM.

Signal handlers can only be installed from the main thread; elsewhere
:func:`stop_on_signals` does nothing and the default behaviour stays.
"""

import contextlib
import signal
import threading

#: The signals :func:`stop_on_signals` handles by default.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A run was stopped by a signal.

    Attributes
    ----------
    signum : int
        The signal (``signal.SIGINT`` or ``signal.SIGTERM``).
    out_dir : str or None
        The run folder, when the run had one.
    epoch : int or None
        The last epoch completed and checkpointed (0: none).
    """

    def __init__(self, signum=signal.SIGINT, *, out_dir=None, epoch=None):
        super().__init__(signum)
        self.signum = int(signum)
        self.out_dir = out_dir
        self.epoch = epoch

    @property
    def signal_name(self):
        return signal.Signals(self.signum).name

    @property
    def exit_status(self):
        """``128 + signum``: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum


# Deferral state. Signal handlers run in the main thread between bytecodes,
# so plain module globals are enough: no lock is needed (or possible).
_defer_depth = 0
_pending_signum = None


def _raise_or_defer(signum, frame):
    global _pending_signum
    if _defer_depth > 0:
        _pending_signum = signum
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def stop_on_signals(signals=STOP_SIGNALS):
    """Within the block, each of ``signals`` raises :class:`Interrupted` (or is deferred).

    The previous handlers are restored when the block ends.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise_or_defer) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def deferred_interrupts():
    """Hold back :class:`Interrupted` until the block ends (a critical section).

    Only signals handled by :func:`stop_on_signals` are deferred; a plain
    ``KeyboardInterrupt`` from Python's default SIGINT handler is not. Blocks
    nest; the signal is raised when the outermost one ends normally. If the
    block raises, that exception propagates and the signal stays pending.
    """
    global _defer_depth, _pending_signum
    _defer_depth += 1
    try:
        yield
    finally:
        _defer_depth -= 1
    if _defer_depth == 0 and _pending_signum is not None:
        signum, _pending_signum = _pending_signum, None
        raise Interrupted(signum)
