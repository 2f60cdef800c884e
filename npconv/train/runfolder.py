"""The run folder: the one place that knows its files, writes them and reads them back.

A run folder holds:

==================  ==========================================================
``config.json``     every setting, plus the dataset's SHA-256, the normalization
                    used and npconv's version
``plan.json``       the fast engine's block sizes and chunks, fixed for the run
                    (:mod:`npconv.engine.plan`); ``--resume`` reuses them
``history.csv``     one row per epoch: ``epoch,train_loss,train_acc,test_loss,test_acc,seconds``
                    (accuracies as fractions; ``val_loss,val_acc`` follow with a validation split)
``health.csv``      per layer per epoch: gradient norm, update/weight ratio, dead ReLUs,
                    saturated sigmoid/tanh units (:mod:`npconv.train.health`)
``checkpoint.npz``  the state after the last completed epoch (:mod:`npconv.train.checkpoint`)
``summary.json``    :class:`Summary`: the status, the last epoch's figures, the seconds, the advice
``model.npz``       weights and architecture (:mod:`npconv.train.modelfile`), once completed
``curves.png``      loss and accuracy curves, train and test, once the run ends
``losses.csv``      every training step's loss as it trains: ``step,epoch,loss,time`` (``step`` counted
                    from the run's start, ``time`` in seconds since 1970), appended a whole line at a time
``snapshot.npz``    the first convolution's filters and their feature maps of a fixed test image, rewritten
                    a few times per epoch (:mod:`npconv.train.live`) so a page can watch them change
``error.txt``       why the run failed, when a sweep could not train it
``.lock``           held while a process writes into the folder (:func:`npconv.io.lock_dir`)
==================  ==========================================================

Every file is written atomically (but ``losses.csv``, which grows a line at a time: a reader ignores
a last line that has no end yet). At the end of each epoch the history, the
health figures and the checkpoint are written together (a signal waits until
all three are on disk, :meth:`RunFolder.write_epoch`), so they always describe
the same epoch; ``summary.json`` is written when the run ends, however it ends.
"""

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field, fields

from ..errors import ModelFileError, NpconvError, SettingError
from ..io import atomic_write, lock_dir, locked_by, read_json, read_npz, write_json, write_npz
from .checkpoint import load_checkpoint, save_checkpoint
from .health import HEALTH_COLUMNS, health_csv
from .interrupt import deferred_interrupts
from .loop import EpochStats
from .modelfile import save_model

CONFIG_FILE = "config.json"
PLAN_FILE = "plan.json"
HISTORY_FILE = "history.csv"
HEALTH_FILE = "health.csv"
CHECKPOINT_FILE = "checkpoint.npz"
SUMMARY_FILE = "summary.json"
MODEL_FILE = "model.npz"
CURVES_FILE = "curves.png"
ERROR_FILE = "error.txt"
LOSSES_FILE = "losses.csv"
SNAPSHOT_FILE = "snapshot.npz"
#: Every file a run folder may hold (but its lock).
RUN_FILES = (CONFIG_FILE, PLAN_FILE, HISTORY_FILE, HEALTH_FILE, CHECKPOINT_FILE, SUMMARY_FILE, MODEL_FILE, CURVES_FILE,
             ERROR_FILE, LOSSES_FILE, SNAPSHOT_FILE)
LOSS_COLUMNS = ["step", "epoch", "loss", "time"]

#: How a run can end. ``completed`` and ``diverged`` runs are over: a sweep does not train them again.
STATUSES = ("completed", "diverged", "interrupted")
DONE_STATUSES = ("completed", "diverged")

HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "seconds"]
_FIGURES = ("train_loss", "train_acc", "test_loss", "test_acc")


@dataclass
class Summary:
    """``summary.json``: how a run ended and its last completed epoch's figures.

    Accuracies are fractions; a figure is None when no epoch completed.
    ``message`` and ``diverged_at`` (``{"epoch", "step"}``) say why and where a
    run diverged; ``signal`` names the signal that interrupted one;
    ``checkpoint`` is the checkpoint kept by a run that did not complete.
    """

    status: str
    epochs: int
    out_dir: str
    advice: list = field(default_factory=list)
    train_loss: float | None = None
    train_acc: float | None = None
    test_loss: float | None = None
    test_acc: float | None = None
    total_seconds: float | None = None
    seconds_per_epoch: float | None = None
    val_loss: float | None = None
    val_acc: float | None = None
    message: str | None = None
    diverged_at: dict | None = None
    signal: str | None = None
    checkpoint: str | None = None

    @property
    def done(self):
        """Whether the run is over (completed or diverged), so a sweep does not train it again."""
        return self.status in DONE_STATUSES

    @classmethod
    def of(cls, status, history, out_dir, advice, **extra):
        """The summary of a run that ended with ``status`` after the epochs in ``history``."""
        summary = cls(status=status, epochs=len(history), out_dir=os.fspath(out_dir), advice=list(advice), **extra)
        if history:
            last = history[-1]
            for name in (*_FIGURES, "val_loss", "val_acc"):
                setattr(summary, name, getattr(last, name))
            summary.total_seconds = sum(h.seconds for h in history)
            summary.seconds_per_epoch = summary.total_seconds / len(history)
        if status != "completed":
            summary.checkpoint = CHECKPOINT_FILE if history else None
        return summary

    def to_json(self):
        """The JSON object: figures first, then what happened, then where; absent keys are those that do not apply."""
        order = ["status", "epochs", *_FIGURES, "total_seconds", "seconds_per_epoch", "val_loss", "val_acc",
                 "message", "diverged_at", "signal", "out_dir", "advice", "checkpoint"]
        obj = {}
        for name in order:
            value = getattr(self, name)
            if value is not None or name == "out_dir" or (name == "checkpoint" and self.status != "completed"):
                obj[name] = value
        return obj

    @classmethod
    def from_json(cls, obj, where):
        """A Summary from the JSON object in ``where``; :class:`NpconvError` if it is not one."""
        names = {f.name for f in fields(cls)}
        if obj.get("status") not in STATUSES or not isinstance(obj.get("epochs"), int):
            raise NpconvError(f"{where}: not an npconv run summary (status {obj.get('status')!r})")
        return cls(**{k: v for k, v in obj.items() if k in names})


@dataclass
class RunRecord:
    """A run folder read back: its config (a dict), history (:class:`EpochStats` per epoch) and :class:`Summary`."""

    path: str
    config: dict
    history: list
    summary: Summary

    @property
    def status(self):
        return self.summary.status


class RunFolder:
    """A run folder at ``path``: every read and write of its files goes through here."""

    def __init__(self, path):
        self.path = os.fspath(path)

    def file(self, name):
        return os.path.join(self.path, name)

    def __repr__(self):
        return f"RunFolder({self.path!r})"

    # --- the folder -------------------------------------------------------------
    def create(self):
        """Make the folder (and its parents); :class:`NpconvError` if that cannot be done."""
        check_folder(self.path, "out_dir")
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as e:
            raise NpconvError(f"{self.path}: cannot create the folder ({e.strerror})") from None

    def lock(self):
        """Hold the folder's lock (a context manager): one writer at a time."""
        return lock_dir(self.path)

    def clear(self):
        """Remove what an earlier attempt at a run left here (every run file), under the folder's lock."""
        self.create()
        with self.lock():
            for name in RUN_FILES:
                try:
                    os.remove(self.file(name))
                except FileNotFoundError:
                    pass

    def holds_run(self):
        """The name of a file that shows a run was started here, or None."""
        return next((name for name in (CONFIG_FILE, CHECKPOINT_FILE) if os.path.exists(self.file(name))), None)

    # --- config.json ----------------------------------------------------------------
    def write_config(self, config):
        write_json(self.file(CONFIG_FILE), config)

    def read_config(self, error=NpconvError):
        return read_json(self.file(CONFIG_FILE), "run config", error)

    # --- plan.json ------------------------------------------------------------------------
    def write_plan(self, plan):
        """Record the engine's plan (a dict, :func:`npconv.engine.plan.record`) the run computes with."""
        write_json(self.file(PLAN_FILE), plan)

    def plan_file(self):
        """The path of the run's recorded plan, or None when it has none (a run of npconv 0.2, or the reference
        engine)."""
        path = self.file(PLAN_FILE)
        return path if os.path.isfile(path) else None

    # --- the end of an epoch ------------------------------------------------------------
    def write_epoch(self, history, health_rows, model, optimizer, *, config, rngs, advice):
        """History, health and checkpoint of the epoch just completed, all three or none (signals wait)."""
        with deferred_interrupts():
            with atomic_write(self.file(HISTORY_FILE), "w") as f:
                f.write(history_csv(history))
            with atomic_write(self.file(HEALTH_FILE), "w") as f:
                f.write(health_csv(health_rows))
            save_checkpoint(self.file(CHECKPOINT_FILE), model, optimizer, epoch=history[-1].epoch, config=config,
                            history=history, rngs=rngs, health=health_rows, advice=advice)

    def read_history(self):
        """``history.csv`` as a list of :class:`EpochStats` (empty when there is none yet)."""
        return read_history(self.file(HISTORY_FILE))

    def read_health(self):
        """``health.csv`` as a list of dicts keyed by its columns (empty when there is none yet)."""
        return read_health(self.file(HEALTH_FILE))

    def read_checkpoint(self):
        return load_checkpoint(self.file(CHECKPOINT_FILE))

    # --- while it trains: step losses and snapshots ------------------------------------------
    def open_losses(self):
        """``losses.csv`` opened for appending, one whole line per write (a :class:`LossLog`)."""
        return LossLog(self.file(LOSSES_FILE))

    def keep_losses(self, through_epoch):
        """Drop the step losses after epoch ``through_epoch`` (those of an epoch a resumed run repeats)."""
        rows = [r for r in self.read_losses() if r[1] <= through_epoch]
        with atomic_write(self.file(LOSSES_FILE), "w") as f:
            f.write(",".join(LOSS_COLUMNS) + "\n" + "".join(_loss_line(*r) for r in rows))

    def read_losses(self, offset=0):
        """The step losses as ``[(step, epoch, loss, time), ...]`` (empty when there are none)."""
        return read_losses(self.file(LOSSES_FILE), offset)[0]

    def write_snapshot(self, arrays):
        write_npz(self.file(SNAPSHOT_FILE), arrays)

    def read_snapshot(self):
        """The arrays of ``snapshot.npz`` (:mod:`npconv.train.live`), or None when there is none."""
        path = self.file(SNAPSHOT_FILE)
        return read_npz(path, "snapshot") if os.path.isfile(path) else None

    def training_now(self):
        """Whether a process holds the folder's lock: a run is training (or resuming) in it right now."""
        return os.path.isdir(self.path) and locked_by(self.path) is not None

    # --- the end of a run -----------------------------------------------------------------
    def write_summary(self, summary):
        with deferred_interrupts():
            write_json(self.file(SUMMARY_FILE), summary.to_json())

    def read_summary(self):
        """The :class:`Summary`, or None when the run has none yet (it is training, or failed to start)."""
        path = self.file(SUMMARY_FILE)
        if not os.path.isfile(path):
            return None
        return Summary.from_json(read_json(path, "run summary"), path)

    def write_model(self, model, model_config):
        save_model(self.file(MODEL_FILE), model, model_config)

    def write_curves(self, history, title):
        """``curves.png`` from the epochs whose figures are all finite (none: no plot)."""
        finite = [h for h in history if all(math.isfinite(getattr(h, name)) for name in _FIGURES)]
        if finite:
            from ..plots import plot_curves  # matplotlib takes a second to import: only when a plot is made

            plot_curves([("", [finite])], self.file(CURVES_FILE), title=title)

    def write_error(self, text):
        os.makedirs(self.path, exist_ok=True)
        with atomic_write(self.file(ERROR_FILE), "w") as f:
            f.write(text)

    def read(self):
        """The whole run as a :class:`RunRecord`; :class:`NpconvError` if this is not a finished run folder."""
        if not os.path.isdir(self.path):
            raise NpconvError(f"{self.path}: no such run folder")
        summary = self.read_summary()
        if summary is None:
            raise NpconvError(f"{self.path}: not a finished run (no {SUMMARY_FILE})")
        return RunRecord(self.path, self.read_config(), self.read_history(), summary)

    # --- moving a run between machines (sweeps) --------------------------------------------
    def files(self):
        """Every file of the run as ``{name: bytes}`` (not the lock, nor temporary files)."""
        out = {}
        for name in sorted(os.listdir(self.path)):
            path = self.file(name)
            if not name.startswith(".") and os.path.isfile(path):
                with open(path, "rb") as f:
                    out[name] = f.read()
        return out

    def store(self, files):
        """Write ``files`` (from :meth:`files` of a run trained elsewhere) here, ``summary.json`` last.

        The summary's ``out_dir`` becomes this folder; a folder with a summary
        is therefore complete. Returns the :class:`Summary` (None if there was none).
        """
        os.makedirs(self.path, exist_ok=True)
        files = dict(files)
        summary_bytes = files.pop(SUMMARY_FILE, None)
        for name, content in sorted(files.items()):
            with atomic_write(self.file(name)) as f:
                f.write(content)
        if summary_bytes is None:
            return None
        summary = Summary.from_json(json.loads(summary_bytes), SUMMARY_FILE)
        summary.out_dir = self.path
        self.write_summary(summary)
        return summary


def check_folder(path, name):
    """A clear :class:`~npconv.errors.SettingError` if ``path`` exists and is not a folder."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise SettingError(name, f"{path}: exists and is not a directory")


def history_csv(history):
    """The history as CSV text; floats in full precision (``repr``) so runs compare exactly."""
    with_val = history and history[0].val_loss is not None
    columns = HISTORY_COLUMNS + (["val_loss", "val_acc"] if with_val else [])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for h in history:
        row = [getattr(h, c) for c in columns]
        writer.writerow([f"{v:.3f}" if c == "seconds" else repr(v) for c, v in zip(columns, row)])
    return buf.getvalue()


class LossLog:
    """``losses.csv`` open for appending: :meth:`write` adds one step's line, written and flushed whole."""

    def __init__(self, path):
        new = not os.path.exists(path) or os.path.getsize(path) == 0
        self._file = open(path, "a", encoding="utf-8", buffering=1)  # line-buffered: one write per line
        if new:
            self._file.write(",".join(LOSS_COLUMNS) + "\n")

    def write(self, step, epoch, loss, time):
        self._file.write(_loss_line(step, epoch, loss, time))

    def close(self):
        self._file.close()


def _loss_line(step, epoch, loss, time):
    return f"{step},{epoch},{loss!r},{time:.3f}\n"


def read_losses(path, offset=0):
    """The whole lines of ``losses.csv`` from byte ``offset`` on: ``([(step, epoch, loss, time), ...], end)``,
    ``end`` the offset to read on from (a last line still being written is left for then)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    except OSError as e:
        raise NpconvError(f"{path}: not readable ({e.strerror})") from None
    whole = data[: data.rfind(b"\n") + 1]
    rows = []
    for line in whole.decode("utf-8", errors="replace").splitlines():
        parts = line.split(",")
        try:
            rows.append((int(parts[0]), int(parts[1]), float(parts[2]), float(parts[3])))
        except (ValueError, IndexError):
            continue  # the header, or a line that is not a step's
    return rows, offset + len(whole)


def _csv_rows(path, what):
    """The rows of a CSV file as dicts; an empty list when the file does not exist."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        return []
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise NpconvError(f"{path}: not a readable {what} ({e})") from None


def read_history(path):
    """``history.csv`` as a list of :class:`EpochStats`; an empty list when the file does not exist."""
    rows = _csv_rows(path, "history")
    names = {f.name for f in fields(EpochStats)}
    try:
        return [EpochStats(**{k: int(v) if k == "epoch" else float(v) for k, v in row.items() if k in names})
                for row in rows]
    except (TypeError, ValueError) as e:
        raise NpconvError(f"{path}: malformed history row ({e})") from None


def read_health(path):
    """``health.csv`` as a list of dicts keyed by :data:`~npconv.train.health.HEALTH_COLUMNS`: ``epoch`` and
    ``layer`` as ints, ``type`` as text, each figure a float or None where it does not apply to the layer;
    an empty list when the file does not exist."""
    out = []
    try:
        for row in _csv_rows(path, "health file"):
            parsed = {"epoch": int(row["epoch"]), "layer": int(row["layer"]), "type": row["type"]}
            for name in HEALTH_COLUMNS[3:]:
                parsed[name] = float(row[name]) if row.get(name) else None
            out.append(parsed)
    except (KeyError, TypeError, ValueError) as e:
        raise NpconvError(f"{path}: malformed health row ({e})") from None
    return out


def is_run_folder(path):
    """Whether ``path`` is a folder holding a run (its ``config.json``)."""
    return os.path.isfile(os.path.join(path, CONFIG_FILE))


def model_file_of(path):
    """The model file ``path`` names: itself, or for a run folder the ``model.npz`` in it.

    Raises :class:`~npconv.errors.ModelFileError` for a run folder without a
    model yet (it is written when the run completes) and for a folder that is no run.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        return path
    model_file = os.path.join(path, MODEL_FILE)
    if os.path.isfile(model_file):
        return model_file
    if not is_run_folder(path):
        raise ModelFileError(f"{path}: a folder without {MODEL_FILE}, not a run folder")
    try:
        summary = RunFolder(path).read_summary() if os.path.isfile(os.path.join(path, SUMMARY_FILE)) else None
    except NpconvError:
        summary = None
    if summary is None or summary.status == "interrupted":
        raise ModelFileError(f"{path}: the run has no {MODEL_FILE} yet (it is written when the run completes): "
                             f"finish it with npconv train --resume {path}")
    raise ModelFileError(f"{path}: the run {summary.status} and has no {MODEL_FILE}")


def find_runs(path):
    """The run folders at ``path``: itself if it is one, else those in ``path/runs/`` (a sweep or study
    folder) or directly in ``path`` (the ``runs/`` folder ``npconv train`` writes into), sorted by name."""
    path = os.fspath(path)
    if is_run_folder(path):
        return [path]
    found = []
    for parent in (os.path.join(path, "runs"), path):
        if os.path.isdir(parent):
            found += [os.path.join(parent, name) for name in sorted(os.listdir(parent))
                      if is_run_folder(os.path.join(parent, name))]
    return found

