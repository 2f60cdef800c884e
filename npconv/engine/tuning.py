"""Choosing how many threads to use, by timing the run's own steps (as cuDNN's autotuner does).

:class:`~npconv.engine.parallel.DataParallel` can run a batch's chunks one after
another, spread over several threads or -- on a Python with the interpreter lock --
over this process and helper processes (:class:`InProcesses`), and every choice
gives the same numbers bit for bit. Which is fastest depends on the CPU and on
what else runs on it. So a :class:`ThreadTuner`

* starts with one thread (or the candidate it is given: an inference pass, whose pieces
  go to whichever core is free, starts on every core) and, at its first check (after
  :attr:`~ThreadTuner.first_check` steps), **tries** each thread count (and the processes) on a
  few of the run's real steps (they are ordinary training steps: trying costs only
  the slower candidates' extra time) and keeps the fastest; the candidates take
  turns, step by step, so that a moment of noise slows them alike;
* **re-checks** every :attr:`~ThreadTuner.check_every` steps: if the steps became
  :attr:`~ThreadTuner.slowdown` times slower than when it chose, or the number of
  free cores changed, it tries again -- and in any case after
  :attr:`~ThreadTuner.retry_every` checks, because a trial timed during a moment of
  noise (on a shared or virtual machine) can choose wrongly, and a wrong choice does
  not slow the steps down after it. A trial that was **not clear** -- the fastest
  candidate less than :data:`CLEAR` times faster than the next, or a candidate's own
  steps more than :data:`CLEAR` times apart -- is tried again sooner: 1 check later,
  then 4, 16, ... (so a doubtful first choice costs a run a few dozen steps, and a
  clear one a trial every few hundred). Those sooner trials leave out the candidates
  the last one found **clearly slower** (by :data:`CLEAR`, their own steps steady):
  two close ways to use two cores are told apart without paying for one-thread steps
  each time; every candidate is tried again at the full interval;
* takes **more threads than there are free cores** only when they are clearly
  faster (:data:`CROWDING`): the free cores are this process's cores minus the
  cores other programs kept busy since the last check, measured from the
  kernel's CPU counters (:class:`CoreMeter`). (OpenBLAS is never given more than
  one thread: its waiting threads spin, and on a crowded machine they collapse.
  Python threads waiting for the interpreter lock sleep instead; whether an extra
  one pays on a busy machine is measured like everything else.)
"""

import os
import statistics
import time
from dataclasses import dataclass

#: A thread count above the free cores is kept only if its steps take less than
#: ``1 / CROWDING`` of the best count that fits: it takes CPU time from other programs (docs/performance.md).
CROWDING = 1.15

#: A trial is clear when its fastest candidate beats the next by this factor and no candidate's own steps are
#: this factor apart; a trial that is not clear is tried again soon (docs/performance.md, "threads").
CLEAR = 1.2


@dataclass(frozen=True)
class InProcesses:
    """A candidate besides the thread counts: the chunks spread over ``cores`` processes, this one and
    ``cores - 1`` helpers (:mod:`npconv.engine.processes`)."""

    cores: int

    def __str__(self):
        return f"{self.cores} processes"


def cores_of(candidate):
    """The cores a candidate keeps busy: a thread count, or an :class:`InProcesses`'s processes."""
    return candidate.cores if isinstance(candidate, InProcesses) else candidate


def _named(candidate):
    if isinstance(candidate, InProcesses):
        return str(candidate)
    return f"{candidate} thread{'s' if candidate > 1 else ''}"


def usable_cores():
    """The number of cores this process may run on (its CPU affinity where the OS tells)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class CoreMeter:
    """How many of this process's cores other programs kept busy between two readings.

    On Linux, ``/proc/stat`` counts the time each core spent busy; the busy time
    of this process's cores, minus this process's own CPU time, over the wall
    time between two readings, is the number of cores others used. Elsewhere
    nothing is known and every core counts as free. ``helpers()``, if given, is the CPU
    time of processes working for this one (helper processes): counted as its own.
    """

    #: Shortest interval worth a reading, seconds (the kernel counts in 10 ms ticks).
    MIN_INTERVAL = 0.1

    def __init__(self, stat_path="/proc/stat", helpers=None):
        self.stat_path = stat_path
        self.helpers = helpers
        self.cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        self.cores_count = usable_cores()
        self._last = self._read()
        self._others = 0.0

    def _busy_seconds(self):
        """Busy seconds of this process's cores since boot, or None when unknown."""
        if self.cores is None:
            return None
        wanted = {f"cpu{i}" for i in self.cores}
        busy = 0
        try:
            with open(self.stat_path) as f:
                for line in f:
                    fields = line.split()
                    if fields and fields[0] in wanted:
                        # user nice system idle iowait irq softirq steal (guest time is inside user and nice;
                        # steal is time the hypervisor gave to others)
                        user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
                        busy += user + nice + system + irq + softirq + steal
        except (OSError, ValueError, IndexError):
            return None
        return busy / os.sysconf("SC_CLK_TCK")

    def _read(self):
        own = time.process_time() + (self.helpers() if self.helpers is not None else 0.0)
        return time.monotonic(), self._busy_seconds(), own

    def others_busy(self):
        """Cores other programs kept busy since the last reading (0 when unknown).

        A call less than :attr:`MIN_INTERVAL` after the last reading returns that reading again.
        """
        now = self._read()
        (t0, busy0, own0), (t1, busy1, own1) = self._last, now
        if t1 - t0 < self.MIN_INTERVAL:
            return self._others
        self._last = now
        if busy0 is not None and busy1 is not None:
            self._others = max(0.0, ((busy1 - busy0) - (own1 - own0)) / (t1 - t0))
        return self._others


class ThreadTuner:
    """Chooses a thread count for the next step, from the timings of the steps before.

    Call :meth:`threads` before a step and :meth:`record` with its duration after.

    Parameters
    ----------
    max_threads : int
        The most threads ever used (the cores, the chunks of a batch, or a user's limit).
    meter : CoreMeter, optional
        Where the cores others keep busy are read; None: every core is free.
    processes : bool
        Whether :class:`InProcesses` (``max_threads`` processes) is a candidate too.
    trial_steps : int
        Steps timed per candidate when trying (after one warm-up step each), the candidates taking turns;
        the median counts.
    check_every : int
        Steps between two checks of the load and of the step time.
    first_check : int
        Steps before the first check (and so the first trial): few, since until then ``start`` runs.
    start : int or InProcesses
        The candidate to run until the first trial (default 1: one thread, whatever the load).
    slowdown : float
        Try again when the median step of a check is this many times the chosen candidate's time.
    retry_every : int
        Checks between two trials when nothing changed and the last trial was clear (a trial costs only the
        slower candidates' extra time on a few steps; docs/performance.md). After a trial that was not
        clear, the next comes 1 check later, then 4, 16, ... at most this many.
    """

    def __init__(self, max_threads, meter=None, *, processes=False, trial_steps=3, check_every=25, first_check=5,
                 slowdown=1.3, retry_every=20, start=1):
        self.max_threads = max(1, max_threads)
        self.candidates = list(range(1, self.max_threads + 1))
        if processes and self.max_threads > 1:
            self.candidates.append(InProcesses(self.max_threads))
        self.meter = meter
        self.trial_steps = trial_steps
        self.check_every = check_every
        self.first_check = first_check
        self.slowdown = slowdown
        self.retry_every = retry_every
        self._checks = 0          # checks since the last trial
        self._retry_after = retry_every  # checks from the last trial to the next one when nothing changes
        self._soon = 1            # checks to the next trial after a trial that was not clear (1, 4, 16, ...)
        self._close = self.candidates  # the candidates a sooner trial tries: all but those clearly slower
        self.clear = None         # whether the last trial was clear (see CLEAR)
        self.others = None        # cores other programs keep busy, smoothed over the checks
        self.free = None          # free cores (at least 1) at the last trial; None before the first check
        self.trials = {}          # candidate -> median seconds of its last trial
        self.chosen = start if start in self.candidates else 1
        self._queue = []          # (candidate, is_warm_up) still to run in the current trial
        self._trial_times = {}    # candidate -> durations of its timed steps in the current trial
        self._times = []          # durations of the steps since the last check
        self._reference = None    # the chosen candidate's step time

    def _free_now(self):
        """Free cores now, at least 1: the cores minus those others kept busy (smoothed over the checks)."""
        if self.meter is None:
            return self.max_threads
        # Smoothed, so that a core busy now and then does not flip the choice at every check.
        reading = self.meter.others_busy()
        self.others = reading if self.others is None else 0.5 * self.others + 0.5 * reading
        return max(1, round(self.meter.cores_count - self.others))

    def _start_trial(self, candidates):
        """Queue a warm-up step of each of ``candidates``, then ``trial_steps`` rounds in which each takes one step,
        the order reversed every other round (1 2, 2 1, 1 2, ...): a slow moment falls on them alike."""
        self.trials = {}
        self._checks = 0
        self._times = []
        self._trial_times = {c: [] for c in candidates}
        self._queue = [(c, True) for c in candidates]
        for r in range(self.trial_steps):
            self._queue += [(c, False) for c in (candidates if r % 2 == 0 else candidates[::-1])]

    def _finish(self):
        """Keep the fastest candidate; one that needs more than the free cores must be clearly faster."""
        def cost(c):
            return self.trials[c] * (CROWDING if cores_of(c) > self.free else 1)

        def steady(c):
            times = self._trial_times[c]
            return bool(times) and max(times) <= CLEAR * min(times)

        self.chosen = min(self.trials, key=cost)
        self._reference = self.trials[self.chosen]
        self._times = []
        costs = sorted(cost(c) for c in self.trials)
        self.clear = (len(costs) < 2 or costs[1] > CLEAR * costs[0]) and all(steady(c) for c in self.trials)
        slower = {c for c in self.trials if cost(c) > CLEAR * cost(self.chosen) and steady(c)}
        # A candidate left out of this trial stays left out until the next full one.
        self._close = [c for c in self.candidates if c not in slower and (c in self.trials or c in self._close)]
        if self.clear:
            self._retry_after, self._soon = self.retry_every, 1
        else:  # a doubtful choice is tried again soon, then ever less soon
            self._retry_after, self._soon = self._soon, min(4 * self._soon, self.retry_every)

    def threads(self):
        """The candidate to run the next step with: a thread count, or :class:`InProcesses`."""
        return self._queue[0][0] if self._queue else self.chosen

    @property
    def trying(self):
        """Whether a trial is under way."""
        return bool(self._queue)

    def record(self, seconds):
        """The duration of the step just run with :meth:`threads` threads."""
        if self._queue:
            candidate, warm_up = self._queue.pop(0)
            if not warm_up:
                self._trial_times[candidate].append(seconds)
            if not self._queue:
                self.trials = {c: statistics.median(times) for c, times in self._trial_times.items()}
                self._finish()
            return
        self._times.append(seconds)
        due = self.check_every if self.free is not None else self.first_check
        if len(self._times) < due or self.max_threads == 1:
            return
        typical = statistics.median(self._times)
        self._times = []
        free = self._free_now()
        slower = self._reference is not None and typical > self.slowdown * self._reference
        self._checks += 1
        # Try again at the first check, when the steps slowed down, when the free cores changed,
        # or when the checks since the last trial reach _retry_after (sooner after a trial that was not clear).
        changed = self.free is None or slower or free != self.free
        if changed or self._checks >= self._retry_after:
            full = changed or self._retry_after >= self.retry_every  # else a sooner trial (see _close)
            self.free = free
            self._start_trial(self.candidates if full or len(self._close) < 2 else self._close)
        elif typical < self._reference:
            self._reference = typical  # compare later steps with the best recent ones

    def describe(self):
        """One line: what was chosen, from which timings."""
        text = _named(self.chosen)
        if self.trying:
            return text + " (trying)"
        if not self.trials:
            return text + (" (not tried yet)" if self.max_threads > 1 else "")
        tried = ", ".join(f"{c}: {1e3 * t:.2f} ms" for c, t in self.trials.items())  # 1, 2, 2 processes
        return text + f" (per step, tried {tried}; {self.free} core(s) free)"
