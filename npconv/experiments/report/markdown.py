"""``REPORT.md``: one Markdown section per experiment of the study, and the findings at the top.

Every number and every sentence of the report comes from the runs: the
study's published figures (from the study file) are shown beside ours and
compared with them (:mod:`npconv.experiments.report.verdicts`), never used as ours.
"""

import os
import time

import numpy as np

from ... import __version__
from ...io import atomic_write
from ...plots import mean_curve, plot_curves
from ...text import format_seconds, plural
from .figures import plot_ablation, plot_grid, plot_sweep
from .points import row_key
from .stats import fmt, indistinguishable, pct, stat
from .verdicts import (
    CHANCE_MARGIN_PP,
    Finding,
    ablation,
    best_setting,
    collapsed,
    collapses,
    converges_first,
    count,
    final_accuracy,
    more_accurate,
    much_slower,
    one_class_scores,
    orderings,
    overfitting,
    plateau,
    trend,
)

FIGURE_DIR = "figures"
REPORT_FILE = "REPORT.md"


def table(head, rows):
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _verdict(v):
    return f"**{v}**"


class ReportWriter:
    """Builds REPORT.md section by section; collects the findings for the summary at the top.

    ``points`` is :func:`~npconv.experiments.report.points.gather`'s
    ``{section id: {row: Point}}``.
    """

    def __init__(self, study, points, out_dir, num_classes=10):
        self.study, self.points, self.out_dir = study, points, out_dir
        self.chance = 100.0 / num_classes
        self.findings = []  # (section title, Finding)
        os.makedirs(os.path.join(out_dir, FIGURE_DIR), exist_ok=True)
        self.sections = {"curves": self.curves, "models": self.models, "sweep": self.sweep, "grid": self.grid,
                         "ablation": self.ablation}

    def figure(self, name):
        rel = f"{FIGURE_DIR}/{name}.png"
        return rel, os.path.join(self.out_dir, rel)

    def find(self, section, finding):
        """Record a finding of ``section``; return its Markdown bullet."""
        self.findings.append((section.title, finding))
        if finding.verdict:
            return f"- {_verdict(finding.verdict)}: {finding.text}"
        return f"- {finding.text}"

    # -- curves
    def curves(self, section):
        point = next(iter(self.points[section.id].values()))
        rel, path = self.figure(section.id)
        plot_curves([("", point.histories)], path,
                    f"{section.title} (mean ± std over {plural(len(point.seeds), 'seed')})")
        out = [f"![{section.title}]({rel})", ""]
        rows = []
        epochs = max((len(h) for h in point.histories), default=0)
        for i in range(epochs):
            row = [i + 1]
            for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
                s = stat([getattr(h[i], key) for h in point.histories if len(h) > i], len(point.seeds))
                row.append(pct(s) if key.endswith("acc") else fmt(s, digits=4))
            rows.append(row)
        out += ["Per epoch, mean ± std over the seeds:", "",
                table(["epoch", "train loss", "train acc %", "test loss", "test acc %"], rows), ""]
        study = section.options.get("study")
        finals = [("train loss", point.stat("train_loss"), study.train_loss, 1.0, 4),
                  ("train accuracy %", point.stat("train_acc"), study.train_acc, 100.0, 2),
                  ("test accuracy %", point.stat("test_acc"), study.test_acc, 100.0, 2)]
        rows = [[name, fmt(s, scale, digits), "—" if ref is None else f"{ref:.{digits}f}"]
                for name, s, ref, scale, digits in finals]
        out += ["Final figures:", "", table(["", "ours", "study"], rows), ""]
        ours = point.stat("test_acc")
        if study.test_acc is not None and ours:
            out.append(self.find(section, final_accuracy(ours, study.test_acc, section.options["tolerance_pp"])))
        return out

    # -- models
    def models(self, section):
        models = section.options["models"]
        points = [self.points[section.id][m] for m in models]
        target = section.options["target_acc"]
        plateau_pp = section.options["plateau_pp"]
        rel, path = self.figure(section.id)
        plot_curves([(m, p.histories) for m, p in zip(models, points)], path,
                    f"{section.title} (mean ± std over {plural(len(points[0].seeds), 'seed')})")
        rows, conv = [], {}
        for m, p in zip(models, points):
            reach = [next((h.epoch for h in hist if 100 * h.test_acc >= target), None) for hist in p.histories]
            reached = [r for r in reach if r is not None]
            if not reached:
                reach_text = f"not within {max((len(h) for h in p.histories), default=0)}"
            else:
                reach_text = fmt(stat(reached), digits=1)
                if len(reached) < len(reach):
                    reach_text += f" ({len(reached)}/{len(reach)} seeds)"
            epochs, means, _ = mean_curve(p.histories, "test_acc")
            conv[m] = plateau(epochs, means, plateau_pp)
            rows.append([m, fmt(p.stat("seconds_per_epoch"), digits=1), fmt(p.stat("total_seconds"), digits=1),
                         fmt(p.stat("train_loss"), digits=4), pct(p.stat("train_acc")), pct(p.stat("test_acc")),
                         reach_text, conv[m][1]])
        out = [table(["model", "seconds / epoch", "training seconds", "train loss", "train acc %", "test acc %",
                      f"epochs to {target:g} % test", "converged"], rows), "",
               f"![{section.title}]({rel})", "",
               f"Seconds are training time only (one BLAS thread per run; evaluation not counted). "
               f"*Converged* means: from that epoch on, no epoch added {plateau_pp:g} points or more of mean test "
               f"accuracy.", ""]
        first, second = models[0], models[1]
        a, b = points[0].stat("test_acc"), points[1].stat("test_acc")
        if a and b:
            out.append(self.find(section, more_accurate(first, a, second, b)))
        ta, tb = points[0].stat("seconds_per_epoch"), points[1].stat("seconds_per_epoch")
        if ta and tb and tb.mean > 0:
            out.append(self.find(section, much_slower(first, ta, second, tb)))
        epochs = max((len(h) for h in points[0].histories), default=0)
        if epochs >= 2:
            out.append(self.find(section, converges_first(first, conv[first], second, conv[second], epochs)))
        return out

    # -- sweep
    def sweep(self, section):
        values, labels = section.options["values"], section.options["labels"]
        study = section.options.get("study")
        points = [self.points[section.id][row_key(v)] for v in values]
        rel, path = self.figure(section.id)
        plot_sweep(section, self.points[section.id], path)
        test = [p.stat("test_acc") for p in points]
        ranked = sorted(range(len(values)), key=lambda i: -test[i].mean if test[i] else float("inf"))
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
            if collapsed(test[i], p.all_diverged, self.chance):
                notes.append("collapsed")
            status = p.status_note()
            if status:
                notes.append(status)
            ours = [fmt(p.stat("train_loss"), digits=4), pct(p.stat("train_acc")), pct(test[i])]
            if study:
                r = study[i]
                cells = [ours[0], f"{r.train_loss:.4f}", ours[1], f"{r.train_acc:.2f}", ours[2], f"{r.test_acc:.2f}"]
            else:
                cells = ours
            rows.append([label, *cells, "; ".join(notes)])
        out = [table(head, rows), "", f"![{section.title}]({rel})", ""]
        if study:
            published = [r.test_acc for r in study]
            findings = collapses(labels, test, [p.all_diverged for p in points], published, self.chance)
            findings += [f for f in (best_setting(labels, test, published), orderings(labels, test, published)) if f]
            out += [self.find(section, f) for f in findings]
        elif best is not None:
            out.append(self.find(section, Finding(None, f"best: {labels[best]} ({pct(test[best])} % test accuracy).")))
        return out

    # -- grid
    def grid(self, section):
        from ...train.settings import make_config

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
                gap = stat([(f.train_acc - f.test_acc) if f else None for f in p.figures], len(p.seeds))
                rows.append([b, e, fmt(p.stat("train_loss"), digits=4), pct(p.stat("train_acc")),
                             pct(p.stat("test_acc")), pct(gap), fmt(p.stat("total_seconds"), digits=1),
                             p.status_note()])
        out += [table(["batch", "epochs", "train loss", "train acc %", "test acc %", "train − test (points)",
                       "training seconds", "note"], rows), "", f"![{section.title}]({rel})", ""]
        if make_config({**self.study.baseline, **section.settings}).lr_schedule == "constant":
            out += ["With a constant learning rate, the first E epochs of a run are exactly a run of E epochs, so "
                    f"each batch size was trained once for {plural(max(epochs), 'epoch')} and the figures for fewer "
                    "epochs are those after that epoch.", ""]
        small = [((f"batch {b1} at {plural(e, 'epoch')}", pts[(b1, e)].stat("train_acc")),
                  (f"batch {b2}", pts[(b2, e)].stat("train_acc")))
                 for e in epochs for b1, b2 in zip(sorted(batches), sorted(batches)[1:])]
        more = [((f"{plural(e2, 'epoch')} at batch {b}", pts[(b, e2)].stat("train_acc")),
                 (f"{e1}", pts[(b, e1)].stat("train_acc")))
                for b in batches for e1, e2 in zip(sorted(epochs), sorted(epochs)[1:])]
        findings = [trend("smaller batches fit the training data better", small),
                    trend("more epochs fit the training data better", more)]
        if len(epochs) >= 2:
            steps = [(f"batch {b} from {e1} to {plural(e2, 'epoch')}", pts[(b, e1)].stat("test_acc"),
                      pts[(b, e2)].stat("test_acc"), pts[(b, e1)].stat("train_acc"), pts[(b, e2)].stat("train_acc"))
                     for b in batches for e1, e2 in zip(sorted(epochs), sorted(epochs)[1:])]
            findings.append(overfitting(steps, max(epochs)))
        out += [self.find(section, f) for f in findings if f]
        return out

    # -- ablation
    def ablation(self, section):
        variants, cases = section.options["variants"], section.options["cases"]
        pts = self.points[section.id]
        tolerance = section.options["tolerance_pp"]
        published = [case.get("study") for case in cases]
        tests = [[pts[(v, c)].stat("test_acc") for c in range(len(cases))] for v in range(len(variants))]
        diverged = [[pts[(v, c)].all_diverged for c in range(len(cases))] for v in range(len(variants))]
        result = ablation([v["label"] for v in variants], [c["label"] for c in cases], tests, diverged, published,
                          tolerance, self.chance)
        rel, path = self.figure(section.id)
        plot_ablation(section, pts, path, self.chance)

        def settings(s):
            return ", ".join(f"{k} = {v}" for k, v in s.items()) or "—"

        out = ["Variants (each on top of the baseline):", "",
               table(["variant", "settings"], [[v["label"], settings(v["set"])] for v in variants]), "",
               "Cases (on top of each variant):", "",
               table(["case", "settings", "study's test acc %"],
                     [[c["label"], settings(c["set"]), "—" if c.get("study") is None else f"{c['study']:.2f}"]
                      for c in cases]), ""]
        rows = []
        marks = {True: " ✓", False: " ✗", None: ""}
        for v, variant in enumerate(variants):
            cells = []
            for c in range(len(cases)):
                point = pts[(v, c)]
                n = len(point.statuses)
                ended = [f"{point.statuses.count(s)}/{n} {s}" for s in dict.fromkeys(point.statuses)
                         if s != "completed"]
                test = tests[v][c]
                figure = pct(stat(test.values)) if test else ""  # its seeds are counted in the note
                note = ", ".join(ended)
                cells.append(" ".join(x for x in (figure, f"({note})" if figure and note else note,
                                                  marks[result.matches[v][c]].strip()) if x) or "—")
            rows.append([variant["label"], *cells, ", ".join(cases[c]["label"] for c in result.reproduces[v]) or "—"])
        head = ["variant", *(f"{c['label']}: test acc %" for c in cases), "reproduces"]
        out += [table(head, rows), "",
                f"✓: as the study (a collapse where it collapsed, else within ±{tolerance:g} points of its figure); "
                "✗: not. A variant *reproduces* a collapse when it collapses there and is ✓ in every case the study "
                "did not see collapse.", "", f"![{section.title}]({rel})", ""]
        ours = sorted({round(100 * t.values[0], 2) for row in tests for t in row
                       if t and len(set(t.values)) == 1 and collapsed(t, False, self.chance)})
        shares = self._one_class_scores(published, ours)
        if shares:
            out += [shares, ""]
        out += [self.find(section, f) for f in result.findings]
        return out

    def _one_class_scores(self, published, ours):
        """Which single class the study's collapsed figures, and ours (``ours``: figures in % that every seed of a
        collapsed setting gave alike), are the share of, as a sentence; None when there is nothing to say."""
        from ... import data
        from ...train.settings import make_config

        theirs = [p for p in published if p is not None and p < self.chance + CHANCE_MARGIN_PP]
        if not theirs:
            return None
        try:
            baseline = make_config(self.study.baseline)
            dataset = data.load_dataset(baseline.dataset, baseline.data_dir)
        except Exception:  # noqa: BLE001 - the data are only needed for this remark; without them it is left out
            return None
        counts = [int(n) for n in np.bincount(dataset.test_labels, minlength=len(dataset.classes))]
        classes = list(dataset.classes)
        parts = [f"{p:.2f} % is {' or '.join(f)}" for p, f in zip(theirs, one_class_scores(counts, theirs, classes))
                 if f]
        if not parts:
            return None
        text = ("A network that gives every test image the same class scores that class's share of the test set: "
                "the study's " + "; ".join(parts) + ".")
        if len(parts) == len(theirs):
            text += " Each collapsed figure of the study equals such a share."
        same = [f"{p:.2f} %, {' or '.join(f)}" for p, f in zip(ours, one_class_scores(counts, ours, classes)) if f]
        if same:
            text += (" Our collapsed settings whose seeds all scored alike did so too: "
                     + "; ".join(same) + ".")
        return text

    # -- the whole report
    def write(self, meta, seeds):
        body = []
        for number, section in enumerate(self.study.sections, start=1):
            body += [f"## {number}. {section.title}", ""]
            if section.study_says:
                body += [f"> The study: {section.study_says}", ""]
            body += self.sections[section.kind](section)
            body.append("")
        head = self._head(meta, seeds)
        text = "\n".join(head + body).rstrip() + "\n"
        path = os.path.join(self.out_dir, REPORT_FILE)
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
                f"from {plural(meta['runs'], 'run')} ({meta.get('runs_reused', 0)} reused from earlier invocations); "
                f"this invocation took {format_seconds(meta['wall_seconds'])} of wall time, and the runs "
                f"{format_seconds(meta.get('seconds_training', 0))} of training time in all. "
                f"Study file: `{study.source}`{f' ({study.source_note})' if study.source_note else ''}. Every run's "
                "folder, and `results.csv`, are beside this report.", ""]
        if overrides:
            shrunk = ", ".join(f"`--{k.replace('_', '-')} {v}`" for k, v in overrides.items())
            out += [f"**A quick look**: every run was shrunk ({shrunk}), so the figures are not comparable with "
                    "the study's and the verdicts below say little.", ""]
        settings = ", ".join(f"{k} = {v}" for k, v in study.baseline.items())
        out += ["## Setup", "", f"Baseline settings of every run (each section changes some): {settings}.", ""]
        if study.baseline_note:
            out += [" ".join(study.baseline_note.split()), ""]
        out += [f"Seeds: {', '.join(map(str, seeds))}. Tables show the mean ± sample standard deviation over the "
                f"{plural(len(seeds), 'seed')} (the seed sets the initial weights, the shuffling and the dropout "
                "masks). Two "
                "settings are called *indistinguishable* when their mean test accuracies differ by less than the "
                "sum of their standard deviations. A setting *collapses* when its test accuracy is within "
                f"{CHANCE_MARGIN_PP:g} points of chance ({self.chance:.0f} %). Training loss and accuracy are "
                "averaged over the last epoch as it trained (dropout active); test figures are measured after it. "
                "The study's figures come from one run each, seed unknown.", ""]
        out += ["## Findings", "",
                "Each of the study's claims, checked against our runs: *reproduced* (our runs agree beyond the "
                "spread over seeds), *not reproduced* (they contradict it beyond the spread), *inconclusive* "
                "(the difference that decides it is within the spread).", ""]
        for title, f in self.findings:
            out.append(f"- {title}: {_verdict(f.verdict) + ' — ' if f.verdict else ''}{f.text}")
        counts = count([f for _, f in self.findings])
        out += ["", "In all: " + ", ".join(f"{k} {v}" for v, k in counts.items()) + ".", ""]
        return out

