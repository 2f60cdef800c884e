"""The report's verdicts as pure functions, on crafted numbers: a clear win, a reversal, a difference inside
the spread over seeds, a collapse, a tie."""

import pytest

from npconv.experiments.report.stats import indistinguishable, stat
from npconv.experiments.report.verdicts import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    REPRODUCED,
    best_setting,
    collapsed,
    collapses,
    converges_first,
    final_accuracy,
    more_accurate,
    much_slower,
    orderings,
    overfitting,
    plateau,
    trend,
)


def acc(*values):
    """An accuracy Stat from fractions, one per seed."""
    return stat(list(values))


CLEAR_HIGH, CLEAR_LOW = acc(0.98, 0.981, 0.979), acc(0.95, 0.951, 0.949)
NOISY_HIGH, NOISY_LOW = acc(0.97, 0.99, 0.95), acc(0.968, 0.988, 0.948)


def test_stats_and_the_spread():
    s = acc(0.9, 0.92, 0.94)
    assert s.mean == pytest.approx(0.92) and s.std == pytest.approx(0.02)
    assert stat([0.5, None, float("nan")], 3).values == [0.5], "missing and non-finite seeds are left out"
    assert not indistinguishable(CLEAR_HIGH, CLEAR_LOW) and indistinguishable(NOISY_HIGH, NOISY_LOW)


def test_final_accuracy_within_and_beyond_tolerance():
    assert final_accuracy(acc(0.94, 0.942), 93.82, 1.0).verdict == REPRODUCED
    far = final_accuracy(acc(0.98, 0.982), 93.82, 1.0)
    assert far.verdict == NOT_REPRODUCED and "+4.28 points" in far.text


@pytest.mark.parametrize("a, b, verdict", [
    (CLEAR_HIGH, CLEAR_LOW, REPRODUCED),        # a clear win
    (CLEAR_LOW, CLEAR_HIGH, NOT_REPRODUCED),    # a reversal
    (NOISY_HIGH, NOISY_LOW, INCONCLUSIVE),      # inside the spread
    (CLEAR_HIGH, CLEAR_HIGH, INCONCLUSIVE),     # a tie
])
def test_more_accurate(a, b, verdict):
    finding = more_accurate("cnn", a, "mlp", b)
    assert finding.verdict == verdict, finding.text
    if verdict == INCONCLUSIVE:
        assert "the seeds cannot tell them apart" in finding.text


def test_much_slower_means_twice_the_time():
    assert much_slower("cnn", stat([4.0, 4.2]), "mlp", stat([0.5, 0.6])).verdict == REPRODUCED
    assert much_slower("cnn", stat([1.0]), "mlp", stat([0.8])).verdict == NOT_REPRODUCED


def test_plateau_and_convergence():
    assert plateau([1, 2, 3, 4], [0.90, 0.95, 0.951, 0.952], 0.2) == (2, "by epoch 2")
    assert plateau([1, 2, 3], [0.90, 0.93, 0.96], 0.2)[0] is None
    assert plateau([1], [0.9], 0.2) == (None, "cannot tell from one epoch")
    mlp_converged, cnn_rising = plateau([1, 2, 3], [0.9, 0.95, 0.951], 0.2), plateau([1, 2, 3], [0.8, 0.9, 0.96], 0.2)
    assert converges_first("cnn", cnn_rising, "mlp", mlp_converged, 3).verdict == REPRODUCED
    assert converges_first("cnn", mlp_converged, "mlp", mlp_converged, 3).verdict == NOT_REPRODUCED


def test_collapse_to_chance():
    chance = 10.0
    assert collapsed(acc(0.098, 0.101), False, chance) and collapsed(stat([]), True, chance)
    assert not collapsed(acc(0.2, 0.21), False, chance), "20 % is 10 points above chance: not a collapse"
    labels, published = ["0.01", "0.1"], [95.0, 9.8]
    ours_collapse = collapses(labels, [CLEAR_HIGH, acc(0.098, 0.1)], [False, False], published, chance)
    assert [f.verdict for f in ours_collapse] == [REPRODUCED]
    ours_do_not = collapses(labels, [CLEAR_HIGH, CLEAR_HIGH], [False, False], published, chance)
    assert [f.verdict for f in ours_do_not] == [NOT_REPRODUCED] and "does not" in ours_do_not[0].text
    only_ours = collapses(labels, [acc(0.09, 0.1), CLEAR_HIGH], [False, False], [95.0, 96.0], chance)
    assert [f.verdict for f in only_ours] == [NOT_REPRODUCED] and "but not in the study's" in only_ours[0].text
    diverged = collapses(["1.0"], [stat([])], [True], [9.8], chance)
    assert diverged[0].verdict == REPRODUCED and "every seed diverged" in diverged[0].text


def test_best_setting():
    labels, published = ["a", "b", "c"], [90.0, 95.0, 92.0]
    assert best_setting(labels, [CLEAR_LOW, CLEAR_HIGH, CLEAR_LOW], published).verdict == REPRODUCED
    assert best_setting(labels, [CLEAR_HIGH, CLEAR_LOW, CLEAR_LOW], published).verdict == NOT_REPRODUCED
    within = best_setting(labels, [NOISY_LOW, NOISY_HIGH, CLEAR_LOW], published)
    assert within.verdict == INCONCLUSIVE
    assert best_setting(labels, [stat([]), stat([]), stat([])], published) is None


def test_orderings_count_agreements_reversals_and_ties():
    labels, published = ["a", "b", "c"], [97.0, 95.0, 93.0]
    agree = orderings(labels, [acc(0.97, 0.971), acc(0.95, 0.951), acc(0.93, 0.931)], published)
    assert agree.verdict == REPRODUCED and "confirms 3" in agree.text
    reverse = orderings(labels, [acc(0.93, 0.931), acc(0.95, 0.951), acc(0.97, 0.971)], published)
    assert reverse.verdict == NOT_REPRODUCED and "reverses 3" in reverse.text
    within = orderings(labels[:2], [NOISY_HIGH, NOISY_LOW], published[:2])
    assert within.verdict == INCONCLUSIVE and "cannot separate 1" in within.text
    assert orderings(labels[:2], [CLEAR_HIGH, CLEAR_LOW], [95.0, 95.0]) is None, "a tie in the study claims nothing"


def test_trend_and_overfitting():
    better = trend("smaller batches fit better", [(("batch 32", CLEAR_HIGH), ("batch 100", CLEAR_LOW))])
    assert better.verdict == REPRODUCED and "higher in 1 of 1" in better.text
    worse = trend("smaller batches fit better", [(("batch 32", CLEAR_LOW), ("batch 100", CLEAR_HIGH))])
    assert worse.verdict == NOT_REPRODUCED
    assert trend("x", [(("a", stat([])), ("b", CLEAR_LOW))]) is None
    over = overfitting([("batch 32 from 10 to 20 epochs", CLEAR_HIGH, CLEAR_LOW, CLEAR_LOW, CLEAR_HIGH)], 20)
    assert over.verdict is None and over.text.startswith("overfitting")
    none = overfitting([("batch 32 from 10 to 20 epochs", CLEAR_LOW, CLEAR_HIGH, CLEAR_LOW, CLEAR_HIGH)], 20)
    assert none.text.startswith("no overfitting within 20 epochs")
