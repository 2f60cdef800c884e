"""``npconv compare``: overlaid curves and one table for any finished runs.

Each run is labelled by the settings in which the runs differ (``lr=0.01
seed=1``), or by its folder's name when they differ in none. A sweep or study
folder (one with a ``runs/`` folder) stands for all its runs.
"""

import os

from ..errors import NpconvError, SettingError
from ..io import atomic_write
from ..train.runfolder import RunFolder, find_runs
from ..train.settings import SETTINGS
from .results import num, pct


def expand_run_dirs(paths):
    """Run folders from the arguments; a folder holding ``runs/`` (a sweep) gives all its runs, sorted."""
    folders = []
    for path in paths:
        found = find_runs(path)
        folders += found if found else [os.fspath(path)]  # not a run: read_run says why
    return folders


def labels_for(records):
    """A short label per run: the settings that differ between the runs, else the folder name."""
    differing = [name for name in SETTINGS if len({repr(r.config.get(name)) for r in records}) > 1]
    if not differing:
        return [os.path.basename(os.path.normpath(r.path)) for r in records]
    return [" ".join(f"{name}={r.config.get(name)}" for name in differing) for r in records]


def compare_table(records, labels):
    """A GitHub Markdown table: one row per run."""
    head = ["run", "folder", "epochs", "train loss", "train acc %", "test loss", "test acc %", "seconds / epoch",
            "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r, label in zip(records, labels):
        s = r.summary
        lines.append("| " + " | ".join([
            label, r.path, str(s.epochs), num(s.train_loss, empty="—"), pct(s.train_acc, "—"),
            num(s.test_loss, empty="—"), pct(s.test_acc, "—"), num(s.seconds_per_epoch, 1, "—"), r.status,
        ]) + " |")
    return "\n".join(lines) + "\n"


def plot_compare(records, labels, path):
    """Train and test loss, train and test accuracy against epoch, one color per run."""
    from ..train.curves import plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (r, label) in enumerate(zip(records, labels)):
        epochs = [h.epoch for h in r.history]
        color = f"C{i % 10}"
        ax_loss.plot(epochs, [h.train_loss for h in r.history], "-", color=color, label=f"{label} train")
        ax_loss.plot(epochs, [h.test_loss for h in r.history], "--", color=color, label=f"{label} test")
        ax_acc.plot(epochs, [100 * h.train_acc for h in r.history], "-", color=color, label=f"{label} train")
        ax_acc.plot(epochs, [100 * h.test_acc for h in r.history], "--", color=color, label=f"{label} test")
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
    records = [RunFolder(folder).read() for folder in folders]
    labels = labels_for(records)
    plot_dir = os.path.dirname(os.path.abspath(plot_path))
    if not os.path.isdir(plot_dir):
        raise SettingError("plot_path", f"{plot_path}: no such folder {plot_dir}")
    plot_compare(records, labels, plot_path)
    return compare_table(records, labels)
