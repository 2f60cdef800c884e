"""``npconv compare``: one table and one figure for any finished runs, however many.

Runs that differ only in their seed are one *setting*: a row of the table
(mean ± standard deviation over the seeds) and one curve per panel (the mean,
with a band of ±1 standard deviation). Each setting is labelled by the
settings in which they differ (``lr=0.01 weight_decay=0.005``) -- or, when
that is too long (a study varies many), by those that differ from the most
common value -- and by its folder's name when they differ in none.

The figure has four panels per row -- train loss, test loss, train
accuracy, test accuracy -- each with at most :data:`~npconv.plots.MAX_SERIES` curves, one
colour per setting and the legend to the right of the row; more settings
get more rows, in the order of the table. A sweep or study folder, or a
folder of run folders such as ``runs/``, stands for all its finished runs
(those without a ``summary.json`` -- still training, or killed -- are skipped
and named). A run found twice (the same settings and seed in two folders) is
counted once.
"""

import os
from dataclasses import dataclass, field

from ..errors import NpconvError, SettingError
from ..plots import plot_comparison
from ..train.runfolder import SUMMARY_FILE, RunFolder, is_run_folder
from ..train.settings import SETTINGS
from .report.stats import fmt, pct, stat
from .runlist import find_run_folders

#: A label longer than this names only the settings that differ from their most common value.
LABEL_WIDTH = 45


@dataclass
class Setting:
    """The runs of one setting (they differ only in their seed): their records and the setting's label."""

    settings: dict
    records: list = field(default_factory=list)
    label: str = ""

    def stat(self, name):
        return stat([getattr(r.summary, name) for r in self.records])

    @property
    def seeds(self):
        return [r.config.get("seed") for r in self.records]


@dataclass
class Comparison:
    """What :func:`compare` found: the table (Markdown), the settings compared, the unfinished runs skipped and
    the folders that repeat a run already counted."""

    table: str
    settings: list
    skipped: list
    duplicates: list = field(default_factory=list)


def run_folders(paths):
    """``(folders, skipped)``: the run folders the arguments name, and the unfinished ones left out.

    A run folder is taken as it is (unfinished, it is an error when read); a
    folder holding runs (``runs/``, a sweep or study folder) stands for its
    finished runs, and its unfinished ones are returned in ``skipped``.
    """
    folders, skipped = [], []
    for path in map(os.fspath, paths):
        if os.path.isfile(path) and path.endswith(".npz"):  # a run's model.npz or checkpoint.npz: its run folder
            folder = os.path.dirname(path) or "."
            if not is_run_folder(folder):
                raise NpconvError(f"{path}: a model file outside a run folder; compare reads a run's history, so "
                                  "name run folders (or a folder of runs)")
            path = folder
        found = [] if is_run_folder(path) else find_run_folders(path)
        if not found:
            folders.append(path)  # a run folder, or not a run at all: reading it says which
            continue
        for folder in found:
            has_summary = os.path.isfile(RunFolder(folder).file(SUMMARY_FILE))
            (folders if has_summary else skipped).append(folder)
    return list(dict.fromkeys(folders)), skipped


def _settings_of(record):
    """A run's settings from its ``config.json``; a setting it predates has its default."""
    return {name: record.config.get(name, spec.default) for name, spec in SETTINGS.items()}


def _order(value):
    """A sort key for setting values of any type: numbers by size, then everything else by its text."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return (0, value, "") if number else (1, 0, str(value))


def group_by_setting(records):
    """``(settings, duplicates)``: the records grouped into :class:`Setting` s (all settings equal but the seed),
    ordered by the settings that vary, each with its runs by seed; and the folders left out because they hold
    a run already counted (the same settings and seed, e.g. a sweep's run copied into ``runs/``)."""
    groups, seen, duplicates = {}, set(), []
    for r in records:
        settings = _settings_of(r)
        run = repr(sorted((k, repr(v)) for k, v in r.config.items() if k != "npconv_version"))
        if run in seen:
            duplicates.append(r.path)
            continue
        seen.add(run)
        key = repr(sorted((k, repr(v)) for k, v in settings.items() if k != "seed"))
        groups.setdefault(key, Setting({k: v for k, v in settings.items() if k != "seed"})).records.append(r)
    out = list(groups.values())
    varying = [n for n in SETTINGS if n != "seed" and len({repr(g.settings[n]) for g in out}) > 1]
    out.sort(key=lambda g: [_order(g.settings[n]) for n in varying])
    for g in out:
        g.records.sort(key=lambda r: (_order(r.config.get("seed")), r.path))
    _label(out, varying)
    return out, duplicates


def _label(groups, varying):
    """Give each setting its label (see the module docstring); ``varying``: the settings whose values differ."""
    modes = {}
    for name in varying:
        values = [repr(g.settings[name]) for g in groups]
        modes[name] = max(dict.fromkeys(values), key=values.count)
    for g in groups:
        full = " ".join(f"{n}={_value(n, g.settings[n])}" for n in varying)
        if not varying:
            g.label = os.path.basename(os.path.normpath(g.records[0].path))
        elif len(full) <= LABEL_WIDTH:
            g.label = full
        else:
            g.label = " ".join(f"{n}={_value(n, g.settings[n])}" for n in varying if repr(g.settings[n]) != modes[n]) \
                or "the most common settings"


def _value(name, value):
    """A setting's value as a label shows it: as a sweep takes it (``none``, ``true``), never Python's ``None``."""
    if value is None:
        return "all" if name == "train_subset" else "none"  # --train-subset's help says "default: all"
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def compare_table(groups):
    """A GitHub Markdown table: one row per setting, figures as mean ± std over its seeds."""
    head = ["setting", "runs", "epochs", "train loss", "train acc %", "test loss", "test acc %", "seconds / epoch",
            "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups:
        if len(g.records) == 1:
            runs = g.records[0].path
        else:
            runs = f"{len(g.records)} runs (seeds {', '.join(map(str, g.seeds))})"
        statuses = [r.status for r in g.records]
        status = ", ".join(s if statuses.count(s) == len(statuses) else f"{s} ({statuses.count(s)})"
                           for s in dict.fromkeys(statuses))
        epochs = sorted({r.summary.epochs for r in g.records})
        lines.append("| " + " | ".join([
            g.label, runs, "–".join(map(str, epochs[::len(epochs) - 1] if len(epochs) > 1 else epochs)),
            fmt(g.stat("train_loss"), digits=4), pct(g.stat("train_acc")), fmt(g.stat("test_loss"), digits=4),
            pct(g.stat("test_acc")), fmt(g.stat("seconds_per_epoch"), digits=2), status,
        ]) + " |")
    return "\n".join(lines) + "\n"


def plot_compare(groups, path):
    """The figure of :func:`npconv.plots.plot_comparison`: one series per setting, labelled with how its runs ended
    when not all completed."""
    series = []
    for g in groups:
        ended = {r.status for r in g.records}
        label = g.label if ended == {"completed"} else f"{g.label} ({', '.join(sorted(ended))})"
        series.append((label, [r.history for r in g.records]))
    plot_comparison(series, path)


def compare(paths, plot_path="compare.png"):
    """Read the runs, write the plot; returns a :class:`Comparison`.

    An unfinished run named on its own is an error; unfinished runs inside a
    folder of runs are skipped (``Comparison.skipped``).
    """
    folders, skipped = run_folders(paths)
    if not folders:
        raise NpconvError("no finished runs to compare" + (f" ({len(skipped)} unfinished)" if skipped else ""))
    plot_dir = os.path.dirname(os.path.abspath(plot_path))
    if not os.path.isdir(plot_dir):
        raise SettingError("plot_path", f"{plot_path}: no such folder {plot_dir}")
    groups, duplicates = group_by_setting([RunFolder(folder).read() for folder in folders])
    plot_compare(groups, plot_path)
    return Comparison(compare_table(groups), groups, skipped, duplicates)
