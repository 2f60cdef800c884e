"""``npconv runs``: every run folder under a folder, newest first, with how it ended.

A run folder is any folder holding a ``config.json`` (:func:`find_run_folders`
looks a few levels down, so ``runs/``, a sweep or study folder, or a folder of
such folders all work). Its status is the one its ``summary.json`` records
(``completed``, ``diverged``, ``interrupted``), or, without a summary,
``running`` while an npconv process holds the folder's lock, else
``unfinished`` (the process was killed or crashed; the checkpoint of its last
completed epoch, if any, is still there for ``npconv train --resume``).
"""

import os
from dataclasses import dataclass

from ..errors import NpconvError
from ..io import locked_by
from ..train.runfolder import CONFIG_FILE, HISTORY_FILE, SUMMARY_FILE, RunFolder, is_run_folder

#: How deep below the folder given run folders are looked for (runs/X, sweep/runs/X, studies/a/runs/X).
MAX_DEPTH = 3


@dataclass
class RunEntry:
    """One run folder as ``npconv runs`` lists it; ``test_acc`` is a fraction or None, ``when`` a Unix time."""

    path: str
    status: str
    model: str
    dataset: str
    epochs_done: int
    epochs: int | None
    test_acc: float | None
    when: float


def find_run_folders(root, depth=MAX_DEPTH):
    """Every run folder at or below ``root`` (down to ``depth`` levels), sorted by path."""
    root = os.fspath(root)
    if is_run_folder(root):
        return [root]
    found = []
    if depth > 0 and os.path.isdir(root):
        for name in sorted(os.listdir(root)):
            path = os.path.join(root, name)
            if os.path.isdir(path) and not name.startswith("."):
                found += find_run_folders(path, depth - 1)
    return found


def _last_change(folder):
    """When the run last wrote: its summary, else its history, else its config (a Unix time)."""
    for name in (SUMMARY_FILE, HISTORY_FILE, CONFIG_FILE):
        try:
            return os.path.getmtime(folder.file(name))
        except OSError:
            continue
    return 0.0


def read_entry(path):
    """The :class:`RunEntry` of one run folder; a damaged file makes its status ``unreadable``."""
    folder = RunFolder(path)
    when = _last_change(folder)
    try:
        config = folder.read_config()
        summary = folder.read_summary()
        history = folder.read_history() if summary is None else None
    except NpconvError:
        return RunEntry(path, "unreadable", "?", "?", 0, None, None, when)
    if summary is not None:
        status, done, acc = summary.status, summary.epochs, summary.test_acc
    else:
        status = "running" if locked_by(path) else "unfinished"
        done, acc = len(history), history[-1].test_acc if history else None
    epochs = config.get("epochs")
    return RunEntry(path, status, str(config.get("model", "?")), str(config.get("dataset", "?")), done,
                    epochs if isinstance(epochs, int) else None, acc, when)


def list_runs(root):
    """Every run folder at or below ``root`` as a :class:`RunEntry`, the newest first.

    Raises :class:`~npconv.errors.NpconvError` when ``root`` is not a folder.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        if os.path.exists(root):
            raise NpconvError(f"{root}: not a directory")
        raise NpconvError(f"{root}: no such directory; npconv train writes its runs into runs/ (train one first), "
                          "or name a folder of runs: npconv runs sweep/")
    entries = [read_entry(path) for path in find_run_folders(root)]
    return sorted(entries, key=lambda e: (-e.when, e.path))
