"""The study report: ``REPORT.md`` and its figures, computed from the run folders.

Every number and every sentence of the report comes from the runs: the
study's published figures (from the study file) are shown beside ours and
compared with them, never used as ours.

How figures are summarized and compared:

* each table cell is the mean ± the sample standard deviation (``ddof=1``)
  over the seeds;
* two settings are *indistinguishable* when their mean test accuracies differ
  by less than the sum of their standard deviations (their ±1 std intervals
  overlap): the seeds cannot tell them apart, and the report says so;
* a setting *collapses* when its mean test accuracy is within
  :data:`CHANCE_MARGIN_PP` points of chance (100 % / number of classes), or
  when every seed diverged;
* a finding is *reproduced* when our runs agree with the study's claim beyond
  the spread, *not reproduced* when they contradict it beyond the spread, and
  *inconclusive* when the difference that decides it is within the spread.
"""

import math
import os
import time
from dataclasses import dataclass, field

from . import __version__
from .fileio import atomic_write
from .errors import NpconvError
from .runfolder import read_history, read_json

#: A test accuracy within this many points of chance counts as collapsed.
CHANCE_MARGIN_PP = 5.0
FIGURE_DIR = "figures"
REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"


# ------------------------------------------------------------------ statistics


@dataclass
class Stat:
    """Mean and sample standard deviation of the finite values among ``n`` seeds."""

    values: list
    n: int

    @property
    def mean(self):
        return sum(self.values) / len(self.values) if self.values else math.nan

    @property
    def std(self):
        if len(self.values) < 2:
            return 0.0
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (len(self.values) - 1))

    def __bool__(self):
        return bool(self.values)


def stat(values, n=None):
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return Stat(finite, len(values) if n is None else n)


def fmt(s, scale=1.0, digits=2):
    """``"93.51 ± 0.21"`` (scaled), ``"93.51"`` for one value, ``"—"`` for none; notes missing seeds."""
    if not s:
        return "—"
    text = f"{scale * s.mean:.{digits}f}"
    if len(s.values) > 1:
        text += f" ± {scale * s.std:.{digits}f}"
    if len(s.values) < s.n:
        text += f" ({len(s.values)}/{s.n} seeds)"
    return text


def pct(s):
    """An accuracy Stat (fractions) as percentages."""
    return fmt(s, 100.0, 2)


def indistinguishable(a, b):
    """Whether two accuracy Stats overlap at ±1 std (see the module docstring)."""
    return abs(a.mean - b.mean) < a.std + b.std


# ------------------------------------------------------------------ the points


@dataclass
class Point:
    """One row of a section (a swept value, a model, a grid cell) over all seeds."""

    row: object
    seeds: list = field(default_factory=list)
    statuses: list = field(default_factory=list)
    figures: list = field(default_factory=list)   # per seed: dict of final figures (None when missing)
    histories: list = field(default_factory=list)  # per seed: the history rows up to the cell's epoch
    folders: list = field(default_factory=list)

    def stat(self, name):
        return stat([(f or {}).get(name) for f in self.figures], len(self.seeds))

    @property
    def all_diverged(self):
        return bool(self.statuses) and all(s == "diverged" for s in self.statuses)

    def status_note(self):
        counts = {s: self.statuses.count(s) for s in dict.fromkeys(self.statuses) if s != "completed"}
        return ", ".join(f"{s} ({k}/{len(self.statuses)})" for s, k in counts.items())


def _cell_figures(run, epoch):
    """The figures and the history of one run, at ``epoch`` (None: its end)."""
    if run is None or run.summary is None:
        return None, []
    history = read_history(os.path.join(run.folder, "history.csv"))
    if epoch is None:
        s = run.summary
        figures = {k: s.get(k) for k in ("train_loss", "train_acc", "test_loss", "test_acc",
                                         "total_seconds", "seconds_per_epoch")}
        return figures, history
    history = history[:epoch]
    if len(history) < epoch:  # the run stopped (diverged) before that epoch
        return None, history
    last = history[-1]
    seconds = sum(h["seconds"] for h in history)
    figures = {k: last[k] for k in ("train_loss", "train_acc", "test_loss", "test_acc")}
    figures.update(total_seconds=seconds, seconds_per_epoch=seconds / epoch)
    return figures, history


def gather(cells, runs_by_config, config_id):
    """``{section id: {row: Point}}`` from the cells and the runs that hold their figures."""
    sections = {}
    for cell in cells:
        run = runs_by_config.get(config_id(cell.config))
        points = sections.setdefault(cell.section, {})
        point = points.setdefault(_row_key(cell.row), Point(cell.row))
        figures, history = _cell_figures(run, cell.epoch)
        status = run.status if run is not None else "missing"
        if cell.epoch is not None and figures is None and status == "completed":
            status = "missing"
        point.seeds.append(cell.seed)
        point.statuses.append(status)
        point.figures.append(figures)
        point.histories.append(history)
        point.folders.append(run.folder if run is not None else None)
    return sections


def _row_key(row):
    return tuple(row) if isinstance(row, list) else row


# ------------------------------------------------------------------ figures


def _plt():
    from .plotting import plt  # Agg backend, imported only when a figure is drawn

    return plt


def _mean_curve(histories, key):
    """Per epoch: (epochs, mean, std) of ``key`` over the seeds that reached that epoch."""
    longest = max((len(h) for h in histories), default=0)
    epochs, means, stds = [], [], []
    for i in range(longest):
        s = stat([h[i][key] for h in histories if len(h) > i])
        if s:
            epochs.append(i + 1)
            means.append(s.mean)
            stds.append(s.std)
    return epochs, means, stds


def plot_curves_band(series, path, title):
    """Loss and accuracy against epoch (mean over seeds, ±1 std band) for each ``(label, histories)``."""
    plt = _plt()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (label, histories) in enumerate(series):
        color = f"C{i}"
        for key, ax, style, scale in (("train_loss", ax_loss, "-", 1), ("test_loss", ax_loss, "--", 1),
                                      ("train_acc", ax_acc, "-", 100), ("test_acc", ax_acc, "--", 100)):
            epochs, mean, std = _mean_curve(histories, key)
            if not epochs:
                continue
            split = key.split("_")[0]
            ax.plot(epochs, [scale * m for m in mean], style, marker="o", ms=3, color=color,
                    label=f"{label} {split}" if label else split)
            ax.fill_between(epochs, [scale * (m - s) for m, s in zip(mean, std)],
                            [scale * (m + s) for m, s in zip(mean, std)], color=color, alpha=0.15, lw=0)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss (solid: train, dashed: test)")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy (solid: train, dashed: test)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    _save(fig, path)


def _save(fig, path):
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)
    _plt().close(fig)


def _log_axis(values):
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values) and \
        max(values) / min(values) >= 10


def plot_sweep(section, points, path):
    """Test (and train) accuracy against the swept value: mean ± std over seeds, the study's as hollow marks."""
    plt = _plt()
    values, labels = section.options["values"], section.options["labels"]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    xs = list(values) if numeric else list(range(len(values)))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, name, marker in (("test_acc", "test (ours)", "o"), ("train_acc", "train (ours)", "s")):
        stats = [points[_row_key(v)].stat(key) for v in values]
        xy = [(x, s) for x, s in zip(xs, stats) if s]
        if xy:
            ax.errorbar([x for x, _ in xy], [100 * s.mean for _, s in xy], yerr=[100 * s.std for _, s in xy],
                        marker=marker, capsize=4, label=name)
    study = section.options.get("study")
    if study:
        ax.plot(xs, [row[2] for row in study], "D", mfc="none", ms=8, color="k", label="test (study)")
    if numeric and _log_axis(values):
        ax.set_xscale("log")
    if not numeric or len(values) <= 6:
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, rotation=0 if numeric else 10)
    ax.set(xlabel=section.options["vary"].replace("_", " "), ylabel="accuracy (%)", title=section.title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_grid(section, points, path):
    """Accuracy against epochs, one line per batch size (test solid, train dashed)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    epochs = section.options["epochs"]
    for i, b in enumerate(section.options["batch_sizes"]):
        for key, style in (("test_acc", "-"), ("train_acc", "--")):
            stats = [points[(b, e)].stat(key) for e in epochs]
            xy = [(e, s) for e, s in zip(epochs, stats) if s]
            if xy:
                ax.errorbar([e for e, _ in xy], [100 * s.mean for _, s in xy], yerr=[100 * s.std for _, s in xy],
                            fmt=style, marker="o", capsize=3, color=f"C{i}",
                            label=f"batch {b} {key.split('_')[0]}")
    ax.set(xlabel="epochs", ylabel="accuracy (%)", title=section.title + " (solid: test, dashed: train)")
    ax.set_xticks(epochs)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    _save(fig, path)


# ------------------------------------------------------------------ Markdown


def table(head, rows):
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _verdict(v):
    return f"**{v}**"


def _diff_note(a_name, a, b_name, b):
    """A sentence fragment comparing two accuracy Stats, saying when the seeds cannot separate them."""
    d = 100 * (a.mean - b.mean)
    text = f"{a_name} {pct(a)} % vs {b_name} {pct(b)} % (difference {d:+.2f} points"
    if len(a.values) < 2 or len(b.values) < 2:
        return text + "; one seed: no spread measured)"
    if indistinguishable(a, b):
        return text + f", smaller than the spread over seeds, ±{100 * a.std:.2f} and ±{100 * b.std:.2f}: " \
                      "the seeds cannot tell them apart)"
    return text + ", larger than the spread)"


@dataclass
class Finding:
    section: str
    verdict: str
    text: str


class ReportWriter:
    """Builds REPORT.md section by section; collects the findings for the summary at the top."""

    def __init__(self, study, points, out_dir, num_classes=10):
        self.study, self.points, self.out_dir = study, points, out_dir
        self.chance = 100.0 / num_classes
        self.findings = []
        self.figures = []
        os.makedirs(os.path.join(out_dir, FIGURE_DIR), exist_ok=True)

    def figure(self, name):
        rel = f"{FIGURE_DIR}/{name}.png"
        self.figures.append(rel)
        return rel, os.path.join(self.out_dir, rel)

    def find(self, section, verdict, text):
        self.findings.append(Finding(section.title, verdict, text))
        return f"- {_verdict(verdict)}: {text}" if verdict else f"- {text}"

    def collapsed(self, point):
        s = point.stat("test_acc")
        return point.all_diverged or (bool(s) and 100 * s.mean < self.chance + CHANCE_MARGIN_PP)

    # -- curves
    def curves(self, section):
        point = next(iter(self.points[section.id].values()))
        rel, path = self.figure(section.id)
        plot_curves_band([("", point.histories)], path, f"{section.title} (mean ± std over {len(point.seeds)} seeds)")
        out = [f"![{section.title}]({rel})", ""]
        rows = []
        epochs = max((len(h) for h in point.histories), default=0)
        for i in range(epochs):
            row = [i + 1]
            for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
                s = stat([h[i][key] for h in point.histories if len(h) > i], len(point.seeds))
                row.append(pct(s) if key.endswith("acc") else fmt(s, digits=4))
            rows.append(row)
        out += ["Per epoch, mean ± std over the seeds:", "",
                table(["epoch", "train loss", "train acc %", "test loss", "test acc %"], rows), ""]
        study = section.options.get("study", {})
        finals = [("train loss", point.stat("train_loss"), study.get("train_loss"), 1.0, 4),
                  ("train accuracy %", point.stat("train_acc"), study.get("train_acc"), 100.0, 2),
                  ("test accuracy %", point.stat("test_acc"), study.get("test_acc"), 100.0, 2)]
        rows = [[name, fmt(s, scale, digits), "—" if ref is None else f"{ref:.{digits}f}"]
                for name, s, ref, scale, digits in finals]
        out += ["Final figures:", "", table(["", "ours", "study"], rows), ""]
        ours, ref = point.stat("test_acc"), study.get("test_acc")
        if ref is not None and ours:
            d = 100 * ours.mean - ref
            tol = section.options["tolerance_pp"]
            verdict = REPRODUCED if abs(d) <= tol else NOT_REPRODUCED
            out.append(self.find(section, verdict,
                                 f"final test accuracy {pct(ours)} % against the study's {ref:.2f} % "
                                 f"({d:+.2f} points; reproduced means within ±{tol:g})."))
        return out

    # -- models
    def models(self, section):
        models = section.options["models"]
        points = [self.points[section.id][m] for m in models]
        target = section.options["target_acc"]
        plateau = section.options["plateau_pp"]
        rel, path = self.figure(section.id)
        plot_curves_band([(m, p.histories) for m, p in zip(models, points)], path,
                         f"{section.title} (mean ± std over {len(points[0].seeds)} seeds)")
        rows, conv = [], {}
        for m, p in zip(models, points):
            reach = [next((h["epoch"] for h in hist if 100 * h["test_acc"] >= target), None) for hist in p.histories]
            reached = [r for r in reach if r is not None]
            if not reached:
                reach_text = f"not within {max((len(h) for h in p.histories), default=0)}"
            else:
                reach_text = fmt(stat(reached), digits=1)
                if len(reached) < len(reach):
                    reach_text += f" ({len(reached)}/{len(reach)} seeds)"
            conv[m] = self._plateau(p.histories, plateau)
            rows.append([m, fmt(p.stat("seconds_per_epoch"), digits=1), fmt(p.stat("total_seconds"), digits=1),
                         fmt(p.stat("train_loss"), digits=4), pct(p.stat("train_acc")), pct(p.stat("test_acc")),
                         reach_text, conv[m][1]])
        out = [table(["model", "seconds / epoch", "training seconds", "train loss", "train acc %", "test acc %",
                      f"epochs to {target:g} % test", "converged"], rows), "",
               f"![{section.title}]({rel})", "",
               f"Seconds are training time only (one BLAS thread per run; evaluation not counted). "
               f"*Converged* means: from that epoch on, no epoch added {plateau:g} points or more of mean test "
               f"accuracy.", ""]
        first, second = models[0], models[1]
        a, b = points[0].stat("test_acc"), points[1].stat("test_acc")
        if a and b:
            if indistinguishable(a, b):
                verdict = INCONCLUSIVE
            else:
                verdict = REPRODUCED if a.mean > b.mean else NOT_REPRODUCED
            out.append(self.find(section, verdict, f"the {first} is more accurate than the {second}: "
                                                   + _diff_note(first, a, second, b) + "."))
        ta, tb = points[0].stat("seconds_per_epoch"), points[1].stat("seconds_per_epoch")
        if ta and tb and tb.mean > 0:
            ratio = ta.mean / tb.mean
            verdict = REPRODUCED if ratio >= 2 else NOT_REPRODUCED
            out.append(self.find(section, verdict, f"the {first} is much slower to train: {ratio:.1f}× the {second}'s "
                                                   f"seconds per epoch ({ta.mean:.1f} s vs {tb.mean:.1f} s; "
                                                   "'much slower' taken as at least 2×)."))
        (ea, text_a), (eb, text_b) = conv[first], conv[second]
        epochs = max((len(h) for h in points[0].histories), default=0)
        if epochs >= 2:
            agrees = eb is not None and eb < epochs and ea is None
            verdict = REPRODUCED if agrees else NOT_REPRODUCED
            out.append(self.find(section, verdict, f"the {second} converged within {epochs} epochs and the {first} "
                                                   f"had not: ours, {second} {text_b}, {first} {text_a}."))
        return out

    def _plateau(self, histories, plateau_pp):
        """``(epoch or None, text)``: the epoch from which test accuracy stopped rising by ``plateau_pp`` points."""
        epochs, mean, _ = _mean_curve(histories, "test_acc")
        if len(epochs) < 2:
            return None, "cannot tell from one epoch"
        gains = [100 * (mean[i] - mean[i - 1]) for i in range(1, len(mean))]
        if gains[-1] >= plateau_pp:
            return None, f"still improving at epoch {epochs[-1]} (+{gains[-1]:.2f} points)"
        e = len(gains)
        while e > 0 and gains[e - 1] < plateau_pp:
            e -= 1
        return epochs[e], f"by epoch {epochs[e]}"

    # -- sweep
    def sweep(self, section):
        values, labels = section.options["values"], section.options["labels"]
        study = section.options.get("study")
        points = [self.points[section.id][_row_key(v)] for v in values]
        rel, path = self.figure(section.id)
        plot_sweep(section, self.points[section.id], path)
        test = [p.stat("test_acc") for p in points]
        ranked = [i for i in sorted(range(len(values)), key=lambda i: -test[i].mean if test[i] else math.inf)]
        best = ranked[0] if test[ranked[0]] else None
        head = [section.options["vary"].replace("_", " "), "train loss", "train acc %", "test acc %"]
        if study:
            head = [head[0], "train loss (ours)", "(study)", "train acc % (ours)", "(study)",
                    "test acc % (ours)", "(study)"]
        head.append("note")
        rows = []
        for i, (label, p) in enumerate(zip(labels, points)):
            notes = []
            if best is not None and i == best:
                notes.append("best")
            elif best is not None and test[i] and indistinguishable(test[i], test[best]):
                notes.append("≈ best (within the spread)")
            if self.collapsed(p):
                notes.append("collapsed")
            if p.status_note():
                notes.append(p.status_note())
            ours = [fmt(p.stat("train_loss"), digits=4), pct(p.stat("train_acc")), pct(test[i])]
            if study:
                r = study[i]
                cells = [ours[0], f"{r[0]:.4f}", ours[1], f"{r[1]:.2f}", ours[2], f"{r[2]:.2f}"]
            else:
                cells = ours
            rows.append([label, *cells, "; ".join(notes)])
        out = [table(head, rows), "", f"![{section.title}]({rel})", ""]
        if study:
            out += self._sweep_findings(section, labels, points, test, study)
        elif best is not None:
            out.append(self.find(section, None, f"best: {labels[best]} ({pct(test[best])} % test accuracy)."))
        return out

    def _sweep_findings(self, section, labels, points, test, study):
        out = []
        n = len(labels)
        # Collapse to chance.
        for i in range(n):
            study_collapsed = study[i][2] < self.chance + CHANCE_MARGIN_PP
            ours_collapsed = self.collapsed(points[i])
            how = "every seed diverged" if points[i].all_diverged else f"{pct(test[i])} % test accuracy"
            if study_collapsed:
                verdict = REPRODUCED if ours_collapsed else NOT_REPRODUCED
                does = "does" if ours_collapsed else "does not"
                out.append(self.find(section, verdict, f"{labels[i]} collapses to chance ({self.chance:.0f} %; "
                                                       f"the study: {study[i][2]:.2f} %): ours {does}, with {how}."))
            elif ours_collapsed:
                out.append(self.find(section, NOT_REPRODUCED, f"{labels[i]} collapses in our runs ({how}) but not "
                                                              f"in the study's ({study[i][2]:.2f} %)."))
        # The best setting.
        study_best = max(range(n), key=lambda i: study[i][2])
        candidates = [i for i in range(n) if test[i]]
        if candidates:
            ours_best = max(candidates, key=lambda i: test[i].mean)
            if ours_best == study_best:
                others = [i for i in candidates if i != ours_best]
                text = f"{labels[study_best]} is the best setting (the study: {study[study_best][2]:.2f} %)"
                verdict = REPRODUCED
                if others:
                    runner = max(others, key=lambda i: test[i].mean)
                    text += "; " + _diff_note(labels[ours_best], test[ours_best], labels[runner], test[runner])
                    if indistinguishable(test[ours_best], test[runner]):
                        verdict = INCONCLUSIVE
                out.append(self.find(section, verdict, text + "."))
            else:
                a, b = test[ours_best], test[study_best]
                verdict = INCONCLUSIVE if b and indistinguishable(a, b) else NOT_REPRODUCED
                note = _diff_note(labels[ours_best], a, labels[study_best], b)
                out.append(self.find(section, verdict, f"{labels[study_best]} is the best setting (the study: "
                                                       f"{study[study_best][2]:.2f} %): ours ranks "
                                                       f"{labels[ours_best]} first; {note}."))
        # Every ordering of two settings the study reports.
        agree, reversed_, within = [], [], []
        for i in range(n):
            for j in range(i + 1, n):
                if abs(study[i][2] - study[j][2]) < 0.01 or not (test[i] and test[j]):
                    continue
                hi, lo = (i, j) if study[i][2] > study[j][2] else (j, i)
                pair = f"{labels[hi]} > {labels[lo]}"
                if indistinguishable(test[hi], test[lo]):
                    within.append(pair)
                elif test[hi].mean > test[lo].mean:
                    agree.append(pair)
                else:
                    reversed_.append(pair)
        total = len(agree) + len(reversed_) + len(within)
        if total:
            verdict = NOT_REPRODUCED if reversed_ else (INCONCLUSIVE if within else REPRODUCED)
            text = f"of the study's {total} orderings of two settings by test accuracy, ours confirms {len(agree)}"
            if reversed_:
                text += f", reverses {len(reversed_)} ({'; '.join(reversed_)})"
            if within:
                text += f", and cannot separate {len(within)} within the spread over seeds ({'; '.join(within)})"
            out.append(self.find(section, verdict, text + "."))
        return out

    # -- grid
    def grid(self, section):
        batches, epochs = section.options["batch_sizes"], section.options["epochs"]
        pts = self.points[section.id]
        rel, path = self.figure(section.id)
        plot_grid(section, pts, path)
        out = ["Test accuracy % (rows: batch size, columns: epochs):", "",
               table(["batch \\ epochs", *map(str, epochs)], [[b, *(pct(pts[(b, e)].stat("test_acc")) for e in epochs)]
                                                              for b in batches]), "",
               "Every cell:", ""]
        rows = []
        for b in batches:
            for e in epochs:
                p = pts[(b, e)]
                gap = stat([(f["train_acc"] - f["test_acc"]) if f else None for f in p.figures], len(p.seeds))
                rows.append([b, e, fmt(p.stat("train_loss"), digits=4), pct(p.stat("train_acc")),
                             pct(p.stat("test_acc")), pct(gap), fmt(p.stat("total_seconds"), digits=1),
                             p.status_note()])
        out += [table(["batch", "epochs", "train loss", "train acc %", "test acc %", "train − test (points)",
                       "training seconds", "note"], rows), "", f"![{section.title}]({rel})", ""]
        from .study import make_config

        if make_config(**{**self.study.baseline, **section.settings}).lr_schedule == "constant":
            out += ["With a constant learning rate, the first E epochs of a run are exactly a run of E epochs, so "
                    f"each batch size was trained once for {max(epochs)} epochs and the figures for fewer epochs are "
                    "those after that epoch.", ""]
        out += self._grid_findings(section, batches, epochs, pts)
        return out

    def _grid_findings(self, section, batches, epochs, pts):
        out = []

        def trend(pairs):
            """(better, worse, within): pairs (a, b) where a should fit the training data better than b."""
            better, worse, within = [], [], []
            for (a_name, a), (b_name, b) in pairs:
                if not (a and b):
                    continue
                label = f"{a_name} vs {b_name}"
                if indistinguishable(a, b):
                    within.append(label)
                elif a.mean > b.mean:
                    better.append(label)
                else:
                    worse.append(label)
            return better, worse, within

        def say(claim, result):
            better, worse, within = result
            total = len(better) + len(worse) + len(within)
            if not total:
                return
            verdict = NOT_REPRODUCED if worse else (INCONCLUSIVE if within else REPRODUCED)
            text = f"{claim}: training accuracy is higher in {len(better)} of {total} comparisons"
            if worse:
                text += f", lower in {len(worse)} ({'; '.join(worse)})"
            if within:
                text += f", within the spread in {len(within)} ({'; '.join(within)})"
            out.append(self.find(section, verdict, text + "."))

        small = [((f"batch {b1} at {e} epochs", pts[(b1, e)].stat("train_acc")),
                  (f"batch {b2}", pts[(b2, e)].stat("train_acc")))
                 for e in epochs for b1, b2 in zip(sorted(batches), sorted(batches)[1:])]
        say("smaller batches fit the training data better", trend(small))
        more = [((f"{e2} epochs at batch {b}", pts[(b, e2)].stat("train_acc")),
                 (f"{e1}", pts[(b, e1)].stat("train_acc")))
                for b in batches for e1, e2 in zip(sorted(epochs), sorted(epochs)[1:])]
        say("more epochs fit the training data better", trend(more))
        overfit = []
        for b in batches:
            for e1, e2 in zip(sorted(epochs), sorted(epochs)[1:]):
                t1, t2 = pts[(b, e1)].stat("test_acc"), pts[(b, e2)].stat("test_acc")
                r1, r2 = pts[(b, e1)].stat("train_acc"), pts[(b, e2)].stat("train_acc")
                if not (t1 and t2 and r1 and r2):
                    continue
                if t2.mean < t1.mean and not indistinguishable(t1, t2) and r2.mean > r1.mean:
                    overfit.append(f"batch {b} from {e1} to {e2} epochs ({pct(t1)} → {pct(t2)} % test)")
        if len(epochs) >= 2:
            if overfit:
                text = ("overfitting (test accuracy falling beyond the spread while training accuracy rises): "
                        + "; ".join(overfit))
            else:
                text = (f"no overfitting within {max(epochs)} epochs: no batch size loses test accuracy beyond the "
                        "spread while its training accuracy rises")
            out.append(self.find(section, None, text + "."))
        return out

    # -- the whole report
    def write(self, meta, seeds):
        body = []
        for number, section in enumerate(self.study.sections, start=1):
            body += [f"## {number}. {section.title}", ""]
            if section.study_says:
                body += [f"> The study: {section.study_says}", ""]
            body += getattr(self, section.kind)(section)
            body.append("")
        head = self._head(meta, seeds)
        text = "\n".join(head + body).rstrip() + "\n"
        path = os.path.join(self.out_dir, "REPORT.md")
        with atomic_write(path, "w") as f:
            f.write(text)
        return path

    def _head(self, meta, seeds):
        study = self.study
        overrides = meta.get("overrides") or {}
        out = [f"# {study.title}", ""]
        if study.description:
            out += [study.description.strip(), ""]
        out += [f"Generated by `npconv study` (npconv {__version__}) on {time.strftime('%Y-%m-%d %H:%M')}, "
                f"from {meta['runs']} runs ({meta.get('runs_reused', 0)} reused from earlier invocations); "
                f"this invocation took {_duration(meta['wall_seconds'])} of wall time, and the runs "
                f"{_duration(meta.get('seconds_training', 0))} of training time in all. "
                f"Study file: `{study.source}`. Every run's folder, and `results.csv`, are beside this report.", ""]
        if overrides:
            shrunk = ", ".join(f"`--{k.replace('_', '-')} {v}`" for k, v in overrides.items())
            out += [f"**A quick look**: every run was shrunk ({shrunk}), so the figures are not comparable with "
                    "the study's and the verdicts below say little.", ""]
        settings = ", ".join(f"{k} = {v}" for k, v in study.baseline.items())
        out += ["## Setup", "", f"Baseline settings of every run (each section changes some): {settings}.", ""]
        if study.baseline_note:
            out += [" ".join(study.baseline_note.split()), ""]
        out += [f"Seeds: {', '.join(map(str, seeds))}. Tables show the mean ± sample standard deviation over the "
                f"{len(seeds)} seeds (the seed sets the initial weights, the shuffling and the dropout masks). Two "
                "settings are called *indistinguishable* when their mean test accuracies differ by less than the "
                "sum of their standard deviations. A setting *collapses* when its test accuracy is within "
                f"{CHANCE_MARGIN_PP:g} points of chance ({self.chance:.0f} %). Training loss and accuracy are "
                "averaged over the last epoch as it trained (dropout active); test figures are measured after it. "
                "The study's figures come from one run each, seed unknown.", ""]
        out += ["## Findings", "",
                "Each of the study's claims, checked against our runs: *reproduced* (our runs agree beyond the "
                "spread over seeds), *not reproduced* (they contradict it beyond the spread), *inconclusive* "
                "(the difference that decides it is within the spread).", ""]
        for f in self.findings:
            out.append(f"- {f.section}: {_verdict(f.verdict) + ' — ' if f.verdict else ''}{f.text}")
        counts = {v: sum(f.verdict == v for f in self.findings) for v in (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)}
        out += ["", "In all: " + ", ".join(f"{k} {v}" for v, k in counts.items()) + ".", ""]
        return out


def _duration(seconds):
    from .sweep import format_seconds

    return format_seconds(seconds)


def write_report(study, cells, runs_by_config, out_dir, meta):
    """Write ``out_dir/REPORT.md`` and ``out_dir/figures/*.png``; returns the report's path."""
    from .study import config_id

    points = gather(cells, runs_by_config, config_id)
    num_classes = 10
    for run in runs_by_config.values():
        try:
            num_classes = int(read_json(os.path.join(run.folder, "config.json"))["num_classes"])
            break
        except (NpconvError, KeyError, TypeError, ValueError):
            continue
    writer = ReportWriter(study, points, out_dir, num_classes)
    return writer.write(meta, study.seeds)
