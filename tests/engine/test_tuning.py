"""ThreadTuner and CoreMeter (npconv.engine.tuning): choosing threads by timing, never more than the free cores."""

import pytest

from npconv.engine.tuning import CROWDING, CoreMeter, ThreadTuner


class FakeMeter:
    """A machine of ``cores`` cores where other programs keep ``others`` cores busy."""

    def __init__(self, others=0.0, cores=2):
        self.others = others
        self.cores_count = cores

    def others_busy(self):
        return self.others


def run(tuner, step_seconds, steps):
    """Run ``steps`` steps whose duration is ``step_seconds[threads]``; return the thread counts used."""
    used = []
    for _ in range(steps):
        n = tuner.threads()
        used.append(n)
        tuner.record(step_seconds[n])
    return used


def test_one_thread_until_the_first_check_then_tries_each_candidate_and_keeps_the_fastest():
    tuner = ThreadTuner(2, FakeMeter(), trial_steps=3, check_every=10, first_check=10)
    assert run(tuner, {1: 0.010, 2: 0.006}, 10) == [1] * 10, "the free cores are not known before the first check"
    used = run(tuner, {1: 0.010, 2: 0.006}, 8)
    assert used == [1, 2] + [1, 2, 2, 1, 1, 2], "a warm-up step each, then three timed ones each, taking turns"
    assert not tuner.trying and tuner.chosen == 2
    assert tuner.trials == {1: 0.010, 2: 0.006} and tuner.free == 2
    assert run(tuner, {1: 0.010, 2: 0.006}, 10) == [2] * 10


def test_a_slower_second_thread_is_not_kept():
    tuner = ThreadTuner(2, FakeMeter(), trial_steps=3, check_every=10, first_check=10)
    run(tuner, {1: 0.008, 2: 0.012}, 10 + 8)
    assert tuner.chosen == 1
    assert "tried 1: 8.00 ms, 2: 12.00 ms; 2 core(s) free" in tuner.describe()


def test_warm_up_steps_do_not_count():
    tuner = ThreadTuner(2, FakeMeter(), trial_steps=2, check_every=1, first_check=1)
    tuner.record(0.01)  # the first check: two cores free, a trial starts
    for seconds in (0.5, 0.5, 0.010, 0.006, 0.006, 0.010):  # warm-ups 1 and 2 (slow), then 1 2, 2 1
        tuner.record(seconds)
    assert tuner.chosen == 2 and tuner.trials == {1: 0.010, 2: 0.006}


def test_tries_again_when_the_steps_slow_down():
    tuner = ThreadTuner(2, FakeMeter(), trial_steps=3, check_every=10, first_check=10, slowdown=1.3)
    run(tuner, {1: 0.010, 2: 0.006}, 10 + 8)
    assert tuner.chosen == 2
    # Another program starts: two threads now wait for each other, one thread is unharmed.
    used = run(tuner, {1: 0.011, 2: 0.030}, 10 + 8 + 5)
    assert used[:10] == [2] * 10, "nothing changes before the next check"
    assert used[10:18] == [1, 2, 1, 2, 2, 1, 1, 2], "the check found the steps 5x slower: a new trial"
    assert used[18:] == [1] * 5 and tuner.chosen == 1


def test_a_doubtful_choice_is_tried_again_at_the_next_check():
    """A trial timed in a moment of noise chose one thread, its two-thread steps far apart: the trial was not clear,
    so the tuner tries again at the next check and finds the faster count."""
    tuner = ThreadTuner(2, FakeMeter(), trial_steps=3, check_every=10, first_check=10)
    run(tuner, {1: 0.010, 2: 0.006}, 10)  # the first check: a trial starts
    for seconds in (0.010, 0.010, 0.010, 0.006, 0.030, 0.010, 0.010, 0.012):  # warm-ups 1 2, then 1 2, 2 1, 1 2
        tuner.record(seconds)
    assert tuner.chosen == 1 and tuner.trials == {1: 0.010, 2: 0.012} and not tuner.clear
    used = run(tuner, {1: 0.010, 2: 0.006}, 10 + 8 + 5)
    assert used[:10] == [1] * 10
    assert used[10:18] == [1, 2, 1, 2, 2, 1, 1, 2], "the next check tries again"
    assert used[18:] == [2] * 5 and tuner.chosen == 2 and tuner.clear


def gaps_between_trials(tuner, step_seconds, steps):
    """Run ``steps`` steps; the checks between one trial and the next (the first: checks before the first)."""
    ordinary, gaps = 0, []
    for _ in range(steps):
        was_trying = tuner.trying
        ordinary = 0 if was_trying else ordinary
        tuner.record(step_seconds[tuner.threads()])
        ordinary += not was_trying
        if tuner.trying and not was_trying:
            gaps.append(ordinary // tuner.check_every)
    return gaps


def test_a_clear_choice_is_tried_again_after_retry_every_checks_a_doubtful_one_sooner():
    clear = ThreadTuner(2, FakeMeter(), trial_steps=3, check_every=5, first_check=5, retry_every=20)
    assert gaps_between_trials(clear, {1: 0.010, 2: 0.006}, 300)[:3] == [1, 20, 20]
    assert clear.chosen == 2 and clear.clear
    doubtful = ThreadTuner(2, FakeMeter(), trial_steps=3, check_every=5, first_check=5, retry_every=20)
    gaps = gaps_between_trials(doubtful, {1: 0.010, 2: 0.009}, 600)
    assert gaps[:6] == [1, 1, 4, 16, 20, 20], gaps  # the first check, then 1, 4, 16 checks after, at most 20
    assert doubtful.chosen == 2 and not doubtful.clear


def test_the_first_check_comes_after_a_few_steps():
    tuner = ThreadTuner(2, FakeMeter())
    assert run(tuner, {1: 0.010, 2: 0.006}, 5) == [1] * 5
    assert tuner.trying, "one thread runs until the first check: it comes early"


def test_more_threads_than_free_cores_only_when_clearly_faster():
    """Another program keeps a core busy: a second thread must beat one by the CROWDING margin."""
    meter = FakeMeter(others=1.0)
    tuner = ThreadTuner(2, meter, trial_steps=3, check_every=10, first_check=10)
    run(tuner, {1: 0.010, 2: 0.010 / CROWDING * 1.05}, 10 + 8)
    assert tuner.free == 1 and tuner.chosen == 1, "a little faster is not enough to crowd the other program"
    tuner = ThreadTuner(2, meter, trial_steps=3, check_every=10, first_check=10)
    run(tuner, {1: 0.010, 2: 0.006}, 10 + 8)
    assert tuner.chosen == 2, "much faster: the second thread is kept"


def test_tries_again_when_the_free_cores_change():
    meter = FakeMeter(others=1.0)
    tuner = ThreadTuner(2, meter, trial_steps=3, check_every=10, first_check=10)
    run(tuner, {1: 0.010, 2: 0.009}, 10 + 8)
    assert tuner.chosen == 1 and tuner.free == 1
    run(tuner, {1: 0.010, 2: 0.009}, 30)
    assert tuner.chosen == 1 and tuner.free == 1, "a doubtful trial, tried again one check later: still not clearly faster"
    meter.others = 0.0  # the other program ends: within two checks the free core is seen and a trial runs
    used = run(tuner, {1: 0.010, 2: 0.005}, 40)
    assert 2 in used and tuner.chosen == 2 and tuner.free == 2


def test_one_thread_at_most_means_no_trial():
    tuner = ThreadTuner(1, FakeMeter())
    assert run(tuner, {1: 0.01}, 60) == [1] * 60
    assert not tuner.trials


def fake_stat(tmp_path, busy, idle, cores=(0, 1)):
    """A /proc/stat whose listed cores each show ``busy`` and ``idle`` ticks."""
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
    lines += [f"cpu{i} {busy} 0 0 {idle} 0 0 0 0 0 0" for i in cores]
    path = tmp_path / "stat"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_core_meter_counts_the_busy_time_of_others(tmp_path, monkeypatch):
    import npconv.engine.tuning as tuning

    clock = {"wall": 100.0, "own": 5.0}
    monkeypatch.setattr(tuning.time, "monotonic", lambda: clock["wall"])
    monkeypatch.setattr(tuning.time, "process_time", lambda: clock["own"])
    monkeypatch.setattr(tuning.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    hz = tuning.os.sysconf("SC_CLK_TCK")
    path = fake_stat(tmp_path, busy=0, idle=0)
    meter = CoreMeter(str(path))
    # One second later: each of the 2 cores was busy 0.8 s; this process used 0.6 s of CPU.
    clock["wall"] += 1.0
    clock["own"] += 0.6
    fake_stat(tmp_path, busy=int(0.8 * hz), idle=int(0.2 * hz))
    assert meter.others_busy() == pytest.approx(1.6 - 0.6, abs=2 / hz)
    clock["wall"] += 0.01  # too soon for a new reading: the last one again
    assert meter.others_busy() == pytest.approx(1.0, abs=2 / hz)


def test_core_meter_counts_its_helper_processes_as_its_own(tmp_path, monkeypatch):
    import npconv.engine.tuning as tuning

    clock = {"wall": 100.0, "own": 5.0, "helpers": 2.0}
    monkeypatch.setattr(tuning.time, "monotonic", lambda: clock["wall"])
    monkeypatch.setattr(tuning.time, "process_time", lambda: clock["own"])
    monkeypatch.setattr(tuning.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    hz = tuning.os.sysconf("SC_CLK_TCK")
    fake_stat(tmp_path, busy=0, idle=0)
    meter = CoreMeter(str(tmp_path / "stat"), helpers=lambda: clock["helpers"])
    # One second later: both cores were busy 0.9 s; this process used 0.9 s, its helper 0.8 s: 0.1 core for others.
    clock["wall"] += 1.0
    clock["own"] += 0.9
    clock["helpers"] += 0.8
    fake_stat(tmp_path, busy=int(0.9 * hz), idle=int(0.1 * hz))
    assert meter.others_busy() == pytest.approx(0.1, abs=2 / hz)


def test_core_meter_without_proc_stat_sees_every_core_free(tmp_path):
    meter = CoreMeter(str(tmp_path / "missing"))
    meter._last = (meter._last[0] - 1.0, *meter._last[1:])  # a second ago
    assert meter.others_busy() == 0.0


def test_a_doubtful_trial_is_tried_again_without_the_candidates_clearly_slower():
    """Two threads and two processes about as fast, one thread clearly slower (its steps steady): the trials that
    soon follow leave one thread out -- no one-thread steps while the two close ways are told apart -- and the
    trial at the full interval (``retry_every`` checks) tries every candidate again."""
    from npconv.engine.tuning import InProcesses

    two_processes = InProcesses(2)
    times = {1: 0.010, 2: 0.0050, two_processes: 0.0052}
    tuner = ThreadTuner(2, FakeMeter(), processes=True, trial_steps=3, check_every=5, first_check=5, retry_every=20)
    used = run(tuner, times, 5 + 12)  # one thread until the first check, then a trial of all three
    assert used[5:].count(1) == 4 and not tuner.clear and tuner.chosen == 2
    trials = []  # the candidates of each later trial
    for _ in range(400):
        was_trying = tuner.trying
        candidate = tuner.threads()
        tuner.record(times[candidate])
        if tuner.trying and not was_trying:
            trials.append(set(c for c, _ in tuner._queue))
    assert trials[:3] == [{2, two_processes}] * 3, "the trials 1, 4 and 16 checks later leave one thread out"
    assert trials[3] == {1, 2, two_processes}, "the trial at the full interval tries every candidate"


def test_a_slower_candidate_whose_steps_were_unsteady_is_tried_again_soon():
    """One thread's steps far apart in the trial (noise, not its speed): it stays in the trial that soon follows."""
    tuner = ThreadTuner(2, FakeMeter(), trial_steps=3, check_every=10, first_check=10)
    run(tuner, {1: 0.010, 2: 0.006}, 10)
    for seconds in (0.010, 0.006, 0.030, 0.006, 0.006, 0.010, 0.014, 0.006):  # warm-ups, then 1 2, 2 1, 1 2
        tuner.record(seconds)
    assert tuner.chosen == 2 and not tuner.clear and tuner.trials[1] > CROWDING * tuner.trials[2]
    used = run(tuner, {1: 0.010, 2: 0.006}, 10 + 8)
    assert 1 in used[10:], "the next trial tries one thread again"


def test_a_tuner_given_a_start_runs_it_until_its_first_trial():
    """``start``: the candidate before the first check (an inference pass starts on every core); then the trial
    tries every candidate as usual."""
    from npconv.engine.tuning import InProcesses

    tuner = ThreadTuner(2, FakeMeter(), processes=True, first_check=5, start=InProcesses(2))
    used = run(tuner, {1: 0.010, 2: 0.006, InProcesses(2): 0.005}, 5 + 12)
    assert used[:5] == [InProcesses(2)] * 5
    assert set(used[5:]) == {1, 2, InProcesses(2)} and tuner.chosen == InProcesses(2)
    assert ThreadTuner(1, start=2).threads() == 1, "a start that is not a candidate: one thread"
