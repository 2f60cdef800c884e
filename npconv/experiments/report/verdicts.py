"""Which of the study's claims our runs reproduce: pure functions from numbers to verdicts.

A finding is

* *reproduced* when our runs agree with the study's claim beyond the spread
  over seeds,
* *not reproduced* when they contradict it beyond the spread,
* *inconclusive* when the difference that decides it is within the spread
  (:func:`~npconv.experiments.report.stats.indistinguishable`);

and a setting *collapses* when its mean test accuracy is within
:data:`CHANCE_MARGIN_PP` points of chance (100 % / number of classes), or when
every seed diverged.

Every function here takes numbers (:class:`~npconv.experiments.report.stats.Stat`
of accuracies as fractions, the study's published figures in %) and returns
:class:`Finding` s; none reads a file or draws a figure, so each is tested on
crafted numbers.
"""

from dataclasses import dataclass

from .stats import indistinguishable, pct

#: A test accuracy within this many points of chance counts as collapsed.
CHANCE_MARGIN_PP = 5.0
REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)


@dataclass
class Finding:
    """One sentence of the report about a claim: its verdict (None: an observation, no claim) and its text."""

    verdict: str | None
    text: str


def diff_note(a_name, a, b_name, b):
    """A sentence fragment comparing two accuracy Stats, saying when the seeds cannot separate them."""
    d = 100 * (a.mean - b.mean)
    text = f"{a_name} {pct(a)} % vs {b_name} {pct(b)} % (difference {d:+.2f} points"
    if len(a.values) < 2 or len(b.values) < 2:
        return text + "; one seed: no spread measured)"
    if indistinguishable(a, b):
        return text + f", smaller than the spread over seeds, ±{100 * a.std:.2f} and ±{100 * b.std:.2f}: " \
                      "the seeds cannot tell them apart)"
    return text + ", larger than the spread)"


def collapsed(test_acc, all_diverged, chance_pct):
    """Whether a setting collapsed: every seed diverged, or its mean test accuracy is near chance."""
    return all_diverged or (bool(test_acc) and 100 * test_acc.mean < chance_pct + CHANCE_MARGIN_PP)


# --------------------------------------------------------------------- the baseline's curves


def final_accuracy(ours, published_pct, tolerance_pp):
    """Our final test accuracy against the study's: reproduced when within ``tolerance_pp`` points."""
    d = 100 * ours.mean - published_pct
    verdict = REPRODUCED if abs(d) <= tolerance_pp else NOT_REPRODUCED
    return Finding(verdict, f"final test accuracy {pct(ours)} % against the study's {published_pct:.2f} % "
                            f"({d:+.2f} points; reproduced means within ±{tolerance_pp:g}).")


# --------------------------------------------------------------------- two models compared


def more_accurate(first, a, second, b):
    """The claim "the ``first`` model is more accurate than the ``second``", from their test accuracies."""
    if indistinguishable(a, b):
        verdict = INCONCLUSIVE
    else:
        verdict = REPRODUCED if a.mean > b.mean else NOT_REPRODUCED
    return Finding(verdict, f"the {first} is more accurate than the {second}: " + diff_note(first, a, second, b)
                   + ".")


#: Epochs shorter than this (seconds) are too short to compare: a shared machine's scheduling jitter (tens of
#: milliseconds) weighs as much as the work, as in a quick look's epochs (docs/performance.md).
MIN_TIMED_SECONDS = 0.1


def much_slower(first, seconds_a, second, seconds_b):
    """The claim "the ``first`` is much slower to train", taken as at least 2x the seconds per epoch.

    Inconclusive when either model's epochs are shorter than :data:`MIN_TIMED_SECONDS`.
    """
    a, b = seconds_a.mean, seconds_b.mean
    if min(a, b) < MIN_TIMED_SECONDS:
        return Finding(INCONCLUSIVE, f"the {first} is much slower to train: epochs too short to time "
                                     f"({a:.2g} s and {b:.2g} s per epoch; at least {MIN_TIMED_SECONDS:g} s needed).")
    ratio = a / b
    verdict = REPRODUCED if ratio >= 2 else NOT_REPRODUCED
    return Finding(verdict, f"the {first} is much slower to train: {ratio:.1f}× the {second}'s "
                            f"seconds per epoch ({a:.1f} s vs {b:.1f} s; 'much slower' taken as at least 2×).")


def plateau(epochs, means, plateau_pp):
    """``(epoch or None, text)``: the epoch from which mean test accuracy stopped rising by ``plateau_pp`` points.

    ``epochs`` and ``means`` are a mean curve of test accuracy (fractions).
    None when it is still rising at the last epoch, or there is only one epoch.
    """
    if len(epochs) < 2:
        return None, "cannot tell from one epoch"
    gains = [100 * (means[i] - means[i - 1]) for i in range(1, len(means))]
    if gains[-1] >= plateau_pp:
        return None, f"still improving at epoch {epochs[-1]} (+{gains[-1]:.2f} points)"
    e = len(gains)
    while e > 0 and gains[e - 1] < plateau_pp:
        e -= 1
    return epochs[e], f"by epoch {epochs[e]}"


def converges_first(first, plateau_first, second, plateau_second, epochs):
    """The claim "the ``second`` converged within ``epochs`` epochs and the ``first`` had not".

    ``plateau_*`` are :func:`plateau`'s ``(epoch or None, text)`` for each model.
    """
    (ea, text_a), (eb, text_b) = plateau_first, plateau_second
    agrees = eb is not None and eb < epochs and ea is None
    return Finding(REPRODUCED if agrees else NOT_REPRODUCED,
                   f"the {second} converged within {epochs} epochs and the {first} had not: ours, {second} {text_b}, "
                   f"{first} {text_a}.")


# --------------------------------------------------------------------- a swept setting


def collapses(labels, tests, all_diverged, published_test, chance_pct):
    """For each swept value, whether it collapses to chance, ours against the study's.

    ``tests`` are our test accuracy Stats, ``all_diverged`` whether every seed
    diverged, ``published_test`` the study's test accuracies in %.
    """
    out = []
    for label, test, diverged, theirs in zip(labels, tests, all_diverged, published_test):
        study_collapsed = theirs < chance_pct + CHANCE_MARGIN_PP
        ours_collapsed = collapsed(test, diverged, chance_pct)
        how = "every seed diverged" if diverged else f"{pct(test)} % test accuracy"
        if study_collapsed:
            verdict = REPRODUCED if ours_collapsed else NOT_REPRODUCED
            does = "does" if ours_collapsed else "does not"
            out.append(Finding(verdict, f"{label} collapses to chance ({chance_pct:.0f} %; the study: {theirs:.2f} %): "
                                        f"ours {does}, with {how}."))
        elif ours_collapsed:
            out.append(Finding(NOT_REPRODUCED, f"{label} collapses in our runs ({how}) but not in the study's "
                                               f"({theirs:.2f} %)."))
    return out


def best_setting(labels, tests, published_test):
    """The claim "the study's best value is the best": None when none of ours has a figure."""
    n = len(labels)
    study_best = max(range(n), key=lambda i: published_test[i])
    candidates = [i for i in range(n) if tests[i]]
    if not candidates:
        return None
    ours_best = max(candidates, key=lambda i: tests[i].mean)
    if ours_best == study_best:
        others = [i for i in candidates if i != ours_best]
        text = f"{labels[study_best]} is the best setting (the study: {published_test[study_best]:.2f} %)"
        verdict = REPRODUCED
        if others:
            runner = max(others, key=lambda i: tests[i].mean)
            text += "; " + diff_note(labels[ours_best], tests[ours_best], labels[runner], tests[runner])
            if indistinguishable(tests[ours_best], tests[runner]):
                verdict = INCONCLUSIVE
        return Finding(verdict, text + ".")
    a, b = tests[ours_best], tests[study_best]
    verdict = INCONCLUSIVE if b and indistinguishable(a, b) else NOT_REPRODUCED
    note = diff_note(labels[ours_best], a, labels[study_best], b)
    return Finding(verdict, f"{labels[study_best]} is the best setting (the study: "
                            f"{published_test[study_best]:.2f} %): ours ranks {labels[ours_best]} first; {note}.")


def _tally(claims):
    """Sort claims "a beats b" into those our runs confirm, contradict, or cannot decide within the spread.

    ``claims`` are ``(label, a, b)`` with Stats where the claim is that ``a``
    is higher; returns ``(confirmed, contradicted, within)`` lists of labels
    and the verdict they add up to (any contradiction: not reproduced; else
    any undecided: inconclusive).
    """
    confirmed, contradicted, within = [], [], []
    for label, a, b in claims:
        if indistinguishable(a, b):
            within.append(label)
        elif a.mean > b.mean:
            confirmed.append(label)
        else:
            contradicted.append(label)
    verdict = NOT_REPRODUCED if contradicted else (INCONCLUSIVE if within else REPRODUCED)
    return confirmed, contradicted, within, verdict


def orderings(labels, tests, published_test):
    """Every ordering of two values by test accuracy the study reports, checked: None when there is none."""
    claims = []
    n = len(labels)
    for i in range(n):
        for j in range(i + 1, n):
            if abs(published_test[i] - published_test[j]) < 0.01 or not (tests[i] and tests[j]):
                continue
            hi, lo = (i, j) if published_test[i] > published_test[j] else (j, i)
            claims.append((f"{labels[hi]} > {labels[lo]}", tests[hi], tests[lo]))
    if not claims:
        return None
    agree, reversed_, within, verdict = _tally(claims)
    text = f"of the study's {len(claims)} orderings of two settings by test accuracy, ours confirms {len(agree)}"
    if reversed_:
        text += f", reverses {len(reversed_)} ({'; '.join(reversed_)})"
    if within:
        text += f", and cannot separate {len(within)} within the spread over seeds ({'; '.join(within)})"
    return Finding(verdict, text + ".")


# --------------------------------------------------------------------- batch size x epochs


def trend(claim, pairs):
    """The claim that the first of each pair fits the training data better: None when no pair has figures.

    ``pairs`` are ``((name_a, train_acc_a), (name_b, train_acc_b))`` with
    accuracy Stats; the claim holds for a pair when ``a`` is higher beyond the spread.
    """
    claims = [(f"{a_name} vs {b_name}", a, b) for (a_name, a), (b_name, b) in pairs if a and b]
    if not claims:
        return None
    better, worse, within, verdict = _tally(claims)
    text = f"{claim}: training accuracy is higher in {len(better)} of {len(claims)} comparisons"
    if worse:
        text += f", lower in {len(worse)} ({'; '.join(worse)})"
    if within:
        text += f", within the spread in {len(within)} ({'; '.join(within)})"
    return Finding(verdict, text + ".")


def overfitting(steps, longest):
    """An observation on overfitting: test accuracy falling beyond the spread while training accuracy rises.

    ``steps`` are ``(label, test_before, test_after, train_before, train_after)``
    with accuracy Stats, one per batch size and pair of consecutive epoch
    counts; ``longest`` is the largest number of epochs.
    """
    found = []
    for label, t1, t2, r1, r2 in steps:
        if not (t1 and t2 and r1 and r2):
            continue
        if t2.mean < t1.mean and not indistinguishable(t1, t2) and r2.mean > r1.mean:
            found.append(f"{label} ({pct(t1)} → {pct(t2)} % test)")
    if found:
        return Finding(None, "overfitting (test accuracy falling beyond the spread while training accuracy rises): "
                             + "; ".join(found) + ".")
    return Finding(None, f"no overfitting within {longest} epochs: no batch size loses test accuracy beyond the "
                         "spread while its training accuracy rises.")


def count(findings):
    """``{verdict: number of findings}`` for each of :data:`VERDICTS`."""
    return {v: sum(f.verdict == v for f in findings) for v in VERDICTS}



# --------------------------------------------------------------------- an ablation of implementation choices


@dataclass
class Ablation:
    """What an ablation shows, per variant: which cases it matches, and the findings that say so.

    ``matches[v][c]`` is True when variant ``v`` behaves in case ``c`` as the
    study did (collapses where the study collapsed; otherwise stays within the
    tolerance of the study's figure), None when the study gives no figure or
    we have none; ``reproduces[v]`` lists the collapse cases variant ``v``
    reproduces while matching every other case.
    """

    matches: list
    reproduces: list
    findings: list


def ablation(variants, cases, tests, all_diverged, published, tolerance_pp, chance_pct):
    """Which variants reproduce the study's collapses while keeping its other figures: pure numbers in, words out.

    ``tests[v][c]`` are our test accuracy Stats (fractions) of variant ``v``
    in case ``c``, ``all_diverged[v][c]`` whether every seed diverged,
    ``published[c]`` the study's test accuracy in % (None: not reported).
    A case the study saw collapse (within :data:`CHANCE_MARGIN_PP` of chance)
    is reproduced by a variant that collapses there too *and* matches every
    case the study did not see collapse, within ``tolerance_pp`` points.
    """
    collapse_cases = [c for c, p in enumerate(published) if p is not None and p < chance_pct + CHANCE_MARGIN_PP]
    keep_cases = [c for c, p in enumerate(published) if p is not None and c not in collapse_cases]
    matches = []
    for v in range(len(variants)):
        row = []
        for c, p in enumerate(published):
            test = tests[v][c]
            if p is None or not (test or all_diverged[v][c]):
                row.append(None)
            elif c in collapse_cases:
                row.append(collapsed(test, all_diverged[v][c], chance_pct))
            else:
                row.append(bool(test) and abs(100 * test.mean - p) <= tolerance_pp)
        matches.append(row)
    keeps = [all(matches[v][c] for c in keep_cases) for v in range(len(variants))]
    reproduces = [[c for c in collapse_cases if keeps[v] and matches[v][c]] for v in range(len(variants))]

    def ours(v, c):
        return "every seed diverged" if all_diverged[v][c] else f"{pct(tests[v][c])} %" if tests[v][c] else "no figure"

    variants = [f"*{label}*" for label in variants]  # labels may hold commas: set off in the sentences
    kept = " and ".join(f"{cases[c]} within ±{tolerance_pp:g} points of the study's {published[c]:.2f} %"
                        for c in keep_cases) or "the other cases as the study"
    findings = []
    for c in collapse_cases:
        name = f"{cases[c]} collapses to chance (the study: {published[c]:.2f} %)"
        good = [v for v in range(len(variants)) if c in reproduces[v]]
        broken = [variants[v] for v in range(len(variants)) if matches[v][c] and not keeps[v]]
        others = (f"; {', '.join(broken)} collapse{'s' if len(broken) == 1 else ''} it too, but "
                  f"{'its' if len(broken) == 1 else 'their'} {' or '.join(cases[k] for k in keep_cases)} "
                  "does not match the study's") if broken else ""
        if good:
            which = "; ".join(f"{variants[v]} ({ours(v, c)}; " + ", ".join(f"{cases[k]} {ours(v, k)}"
                                                                            for k in keep_cases) + ")" for v in good)
            findings.append(Finding(REPRODUCED, f"{name}: reproduced, with {kept}, by {which}{others}."))
        else:
            findings.append(Finding(NOT_REPRODUCED, f"{name}: no variant collapses it while keeping {kept}{others}."))
    if len(collapse_cases) > 1:
        every = [variants[v] for v in range(len(variants)) if len(reproduces[v]) == len(collapse_cases)]
        text = (f"{' and '.join(every)} reproduce{'s' if len(every) == 1 else ''} every collapse at once"
                if every else "no single variant reproduces every collapse at once")
        findings.append(Finding(None, text + "."))
    return Ablation(matches, reproduces, findings)


def one_class_scores(class_counts, figures_pct, class_names=None):
    """Which classes a network that gives every test image the same class would score each figure with.

    ``class_counts`` are the test set's images per class; ``figures_pct`` are
    accuracies in % as published (two decimals). Returns, per figure, the
    sentence fragments ``"class 4's share (982 of 10000 images)"`` of every
    class whose share rounds to it (an empty list: no single class does).
    """
    total = sum(class_counts)
    names = class_names or [str(k) for k in range(len(class_counts))]
    return [[f"class {names[k]}'s share ({n} of {total} images)" for k, n in enumerate(class_counts)
             if round(100 * n / total, 2) == round(figure, 2)] for figure in figures_pct]
