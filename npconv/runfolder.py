"""Reading a run folder back: its config, its per-epoch history and its summary.

A run folder is what ``npconv train`` writes (see :mod:`npconv.run`):
``config.json``, ``history.csv``, ``summary.json``, ``model.npz``,
``curves.png`` (and ``health.csv``, ``checkpoint.npz``). A run is *done* once
``summary.json`` exists with a status of ``completed`` or ``diverged`` (a
summary without a status comes from a version that wrote summaries only for
completed runs; ``interrupted`` runs are not done). Sweeps use that to skip runs
that are already done; ``npconv compare`` and the study report read the
figures from here.
"""

import csv
import json
import math
import os
from dataclasses import dataclass

from .errors import NpconvError

#: Statuses of a run that is over and must not be trained again.
DONE_STATUSES = ("completed", "diverged")


@dataclass
class RunRecord:
    """One run folder, read back.

    Attributes
    ----------
    path : str
        The folder.
    config : dict
        ``config.json``: every :class:`~npconv.run.TrainConfig` field plus the
        dataset's SHA-256, the training-set size and npconv's version.
    history : list[dict[str, float]]
        ``history.csv``, one dict per epoch (``epoch`` is an int, the rest floats).
    summary : dict
        ``summary.json``, with ``status`` filled in (``completed`` when absent).
    """

    path: str
    config: dict
    history: list
    summary: dict

    @property
    def status(self):
        return self.summary["status"]


def read_json(path):
    """A JSON file as a dict; :class:`NpconvError` naming the file if it is missing or malformed."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise NpconvError(f"{path}: no such file") from None
    except (OSError, ValueError) as e:
        raise NpconvError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(obj, dict):
        raise NpconvError(f"{path}: expected a JSON object")
    return obj


def read_history(path):
    """``history.csv`` as a list of dicts: ``epoch`` an int, every other column a float."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        return []
    except (OSError, csv.Error) as e:
        raise NpconvError(f"{path}: not a readable history ({e})") from None
    try:
        return [{k: int(v) if k == "epoch" else float(v) for k, v in row.items()} for row in rows]
    except (TypeError, ValueError) as e:
        raise NpconvError(f"{path}: malformed history row ({e})") from None


def read_summary(folder):
    """``folder/summary.json`` with its status filled in, or ``None`` when there is none yet."""
    path = os.path.join(folder, "summary.json")
    if not os.path.isfile(path):
        return None
    summary = read_json(path)
    summary.setdefault("status", "completed")
    return summary


def is_done(folder):
    """Whether the run in ``folder`` is over (completed or diverged), so a sweep skips it."""
    try:
        summary = read_summary(folder)
    except NpconvError:  # a damaged summary: train the run again
        return False
    return summary is not None and summary["status"] in DONE_STATUSES


def read_run(folder):
    """Read a run folder that has a summary; :class:`NpconvError` if it is not one."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise NpconvError(f"{folder}: no such run folder")
    summary = read_summary(folder)
    if summary is None:
        raise NpconvError(f"{folder}: not a finished run (no summary.json)")
    config = read_json(os.path.join(folder, "config.json"))
    history = read_history(os.path.join(folder, "history.csv"))
    return RunRecord(folder, config, history, summary)


def last_finite_summary(history):
    """The final figures of a run that diverged: its last epoch whose figures are all finite.

    Returns a dict with ``epochs`` (epochs completed), the last finite epoch's
    ``train_loss, train_acc, test_loss, test_acc`` (``None`` each when no epoch
    completed) and the training seconds so far.
    """
    finite = [h for h in history if all(math.isfinite(v) for v in h.values())]
    seconds = sum(h["seconds"] for h in history)
    summary = {"epochs": len(history), "total_seconds": seconds,
               "seconds_per_epoch": seconds / len(history) if history else None}
    last = finite[-1] if finite else {}
    for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
        summary[key] = last.get(key)
    return summary
