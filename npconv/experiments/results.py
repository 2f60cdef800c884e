"""A sweep's results files: ``results.csv`` (every setting and figure, full precision) and ``results.md``."""

import csv
import io
import math
import os
from dataclasses import asdict

from ..io import atomic_write
from ..text import WIDTH, shorten
from ..train.settings import SETTINGS

#: The figures of a run, in the order results.csv lists them.
METRIC_COLUMNS = ["train_loss", "train_acc", "test_loss", "test_acc"]
#: Wall-clock columns of results.csv: the only ones that differ between two sweeps of the same grid.
TIMING_COLUMNS = ["seconds", "seconds_per_epoch"]
RESULT_COLUMNS = ["run", "key", *SETTINGS, "status", "epochs_done", *METRIC_COLUMNS, *TIMING_COLUMNS]
RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"


def varying_settings(runs):
    """The settings whose values differ between the runs (anything with a ``config``), in field order."""
    return [n for n in SETTINGS if len({repr(getattr(r.config, n)) for r in runs}) > 1]


def typical_values(runs):
    """``{setting: its most common value}`` for each setting that varies between the runs (ties: the first)."""
    modes = {}
    for name in varying_settings(runs):
        values = [getattr(r.config, name) for r in runs]
        modes[name] = max(dict.fromkeys(values), key=lambda v: values.count(v))
    return modes


def describe(config, modes, width=WIDTH):
    """``"mlp lr=0.001 seed=1"``: the model and the settings that vary in a sweep, for progress lines.

    ``modes`` is :func:`typical_values` of the sweep. When every varying
    setting does not fit in ``width`` columns (a study varies many), only
    those that differ from their typical value are named, and the seed.
    """
    def text(names):
        return " ".join([config.model] + [f"{n}={getattr(config, n)}" for n in names if n != "model"])

    full = text(modes)
    if len(full) <= width:
        return full
    return shorten(text([n for n, typical in modes.items() if n == "seed" or getattr(config, n) != typical]), width)


def pct(value, empty=""):
    """An accuracy (a fraction) as a percentage with two decimals; ``empty`` for none or a non-finite one."""
    return empty if value is None or not math.isfinite(value) else f"{100 * value:.2f}"


def num(value, digits=4, empty=""):
    return empty if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # full precision: two sweeps compare exactly
    return str(value)


def results_csv(runs, out_dir):
    """``results.csv`` text: one row per run, settings and figures in full precision."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(RESULT_COLUMNS)
    for run in runs:
        s = run.summary
        figures = {c: getattr(s, c) if s else None for c in (*METRIC_COLUMNS, "epochs", "total_seconds",
                                                              "seconds_per_epoch")}
        row = {"run": os.path.relpath(run.folder.path, out_dir), "key": run.key, **asdict(run.config),
               "status": run.status, "epochs_done": figures["epochs"],
               **{c: figures[c] for c in METRIC_COLUMNS},
               "seconds": figures["total_seconds"], "seconds_per_epoch": figures["seconds_per_epoch"]}
        writer.writerow([_cell(row[c]) for c in RESULT_COLUMNS])
    return buf.getvalue()


def results_md(runs, out_dir):
    """``results.md`` text: a Markdown table with the varying settings and the figures."""
    names = varying_settings(runs)
    head = ["run", *names, "train loss", "train acc %", "test loss", "test acc %", "seconds", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in runs:
        s = run.summary
        rel = os.path.relpath(run.folder.path, out_dir)
        figures = [num(s.train_loss), pct(s.train_acc), num(s.test_loss), pct(s.test_acc),
                   num(s.total_seconds, 1)] if s else [""] * 5
        cells = [f"[{os.path.basename(run.folder.path)}]({rel})", *(str(getattr(run.config, n)) for n in names),
                 *figures, run.status]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(runs, out_dir):
    """Write ``results.csv`` and ``results.md`` into ``out_dir`` (atomically)."""
    with atomic_write(os.path.join(out_dir, RESULTS_CSV), "w") as f:
        f.write(results_csv(runs, out_dir))
    with atomic_write(os.path.join(out_dir, RESULTS_MD), "w") as f:
        f.write(results_md(runs, out_dir))
