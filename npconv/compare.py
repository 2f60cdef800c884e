"""``npconv compare``: overlaid curves and one table for any finished runs.

Each run is labelled by the settings in which the runs differ (``lr=0.01
seed=1``), or by its folder's name when they differ in none. A sweep or study
folder (one with a ``runs/`` folder) stands for all its runs.
"""

import os
from dataclasses import fields

from .errors import NpconvError
from .fileio import atomic_write
from .run import TrainConfig
from .runfolder import read_run

SETTINGS = [f.name for f in fields(TrainConfig)]


def expand_run_dirs(paths):
    """Run folders from the arguments; a folder holding ``runs/`` (a sweep) gives all its runs, sorted."""
    folders = []
    for path in paths:
        path = os.fspath(path)
        inner = os.path.join(path, "runs")
        if not os.path.exists(os.path.join(path, "summary.json")) and os.path.isdir(inner):
            folders += sorted(os.path.join(inner, name) for name in os.listdir(inner)
                              if os.path.isdir(os.path.join(inner, name)))
        else:
            folders.append(path)
    return folders


def labels_for(records):
    """A short label per run: the settings that differ between the runs, else the folder name."""
    differing = [name for name in SETTINGS if len({repr(r.config.get(name)) for r in records}) > 1]
    if not differing:
        return [os.path.basename(os.path.normpath(r.path)) for r in records]
    return [" ".join(f"{name}={r.config.get(name)}" for name in differing) for r in records]


def _pct(value):
    return "—" if value is None else f"{100 * value:.2f}"


def _num(value, digits=4):
    return "—" if value is None else f"{value:.{digits}f}"


def compare_table(records, labels):
    """A GitHub Markdown table: one row per run."""
    head = ["run", "folder", "epochs", "train loss", "train acc %", "test loss", "test acc %", "seconds / epoch",
            "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r, label in zip(records, labels):
        s = r.summary
        lines.append("| " + " | ".join([
            label, r.path, str(s.get("epochs", len(r.history))), _num(s.get("train_loss")), _pct(s.get("train_acc")),
            _num(s.get("test_loss")), _pct(s.get("test_acc")), _num(s.get("seconds_per_epoch"), 1), r.status,
        ]) + " |")
    return "\n".join(lines) + "\n"


def plot_compare(records, labels, path):
    """Train and test loss, train and test accuracy against epoch, one color per run."""
    from .plotting import plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (r, label) in enumerate(zip(records, labels)):
        epochs = [h["epoch"] for h in r.history]
        color = f"C{i % 10}"
        ax_loss.plot(epochs, [h["train_loss"] for h in r.history], "-", color=color, label=f"{label} train")
        ax_loss.plot(epochs, [h["test_loss"] for h in r.history], "--", color=color, label=f"{label} test")
        ax_acc.plot(epochs, [100 * h["train_acc"] for h in r.history], "-", color=color, label=f"{label} train")
        ax_acc.plot(epochs, [100 * h["test_acc"] for h in r.history], "--", color=color, label=f"{label} test")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss (solid: train, dashed: test)")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy (solid: train, dashed: test)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def compare(paths, plot_path="compare.png"):
    """Read the runs, write the plot; returns the Markdown table. Unfinished runs are an error."""
    folders = expand_run_dirs(paths)
    if not folders:
        raise NpconvError("no run folders to compare")
    records = [read_run(folder) for folder in folders]
    labels = labels_for(records)
    plot_dir = os.path.dirname(os.path.abspath(plot_path))
    if not os.path.isdir(plot_dir):
        raise NpconvError(f"--out {plot_path}: no such folder {plot_dir}")
    plot_compare(records, labels, plot_path)
    return compare_table(records, labels)
