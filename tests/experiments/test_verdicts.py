"""The report's verdicts as pure functions, on crafted numbers: a clear win, a reversal, a difference inside
the spread over seeds, a collapse, a tie."""

import pytest

from npconv.experiments.report.stats import indistinguishable, stat
from npconv.experiments.report.verdicts import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    REPRODUCED,
    ablation,
    best_setting,
    collapsed,
    collapses,
    converges_first,
    final_accuracy,
    more_accurate,
    much_slower,
    one_class_scores,
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
    # A quick look's epochs: too short to time, so no ratio at all.
    short = much_slower("cnn", stat([0.21, 0.2]), "mlp", stat([0.02, 0.021]))
    assert short.verdict == INCONCLUSIVE and "too short to time" in short.text and "×" not in short.text, short


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


# --------------------------------------------------------------------- the collapse ablation

CASES = ["baseline", "lr 0.1", "weight decay 0.5"]
PUBLISHED = [93.82, 9.82, 9.80]
NONE = stat([])  # every seed diverged: no figure


def test_ablation_names_the_variant_that_collapses_and_keeps_the_baseline():
    variants = ["ours", "too good", "kills all", "the culprit"]
    tests = [[acc(0.942, 0.945), acc(0.985, 0.984), acc(0.79, 0.81)],   # no collapse at all
             [acc(0.981, 0.98), NONE, acc(0.11, 0.112)],                # collapses both, baseline far too good
             [acc(0.1135, 0.1135), acc(0.1135, 0.1135), acc(0.1135, 0.1135)],  # collapses everything
             [acc(0.935, 0.93), NONE, acc(0.098, 0.098)]]               # collapses both, baseline near 93.82
    diverged = [[False, False, False], [False, True, False], [False] * 3, [False, True, False]]
    result = ablation(variants, CASES, tests, diverged, PUBLISHED, 2.0, 10.0)
    assert result.reproduces == [[], [], [], [1, 2]], result.reproduces
    assert result.matches[0] == [True, False, False] and result.matches[2] == [False, True, True]
    lr, decay, every = result.findings
    assert lr.verdict == REPRODUCED and "by *the culprit* (every seed diverged; baseline 93.25 ± 0.35 %)" in lr.text
    assert "*too good*, *kills all* collapse it too, but their baseline does not match" in lr.text, lr.text
    assert decay.verdict == REPRODUCED and every.verdict is None and "*the culprit* reproduces every" in every.text


def test_ablation_says_when_no_variant_reproduces_a_collapse():
    tests = [[acc(0.942, 0.945), acc(0.985, 0.984), acc(0.79, 0.81)], [acc(0.5, 0.52), NONE, acc(0.11, 0.11)]]
    result = ablation(["ours", "broken"], CASES, tests, [[False] * 3, [False, True, False]], PUBLISHED, 2.0, 10.0)
    assert [f.verdict for f in result.findings[:2]] == [NOT_REPRODUCED, NOT_REPRODUCED]
    assert "no variant collapses it while keeping baseline within ±2 points" in result.findings[0].text
    assert "no single variant reproduces every collapse" in result.findings[2].text


def test_one_class_scores_find_the_class_whose_share_a_figure_is():
    counts = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]  # the MNIST test set
    assert one_class_scores(counts, [9.80, 9.82, 11.35, 9.5]) == [
        ["class 0's share (980 of 10000 images)"], ["class 4's share (982 of 10000 images)"],
        ["class 1's share (1135 of 10000 images)"], []]
