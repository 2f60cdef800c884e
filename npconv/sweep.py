"""Sweeps: one training run per point of a grid of settings, each in its own run folder.

A grid gives each ``npconv train`` option a list of values
(``--lr 1e-4,1e-3 --seed 0,1,2``); the sweep trains every combination, in
:class:`~npconv.run.TrainConfig` field order, and writes::

    OUT/runs/MODEL-KEY/     one run folder per setting: the files of ``npconv train``
    OUT/results.csv         one row per run: every setting, the final figures, seconds, status
    OUT/results.md          the same as a GitHub Markdown table (only the settings that vary)

**Run keys.** A run is named by the SHA-256 of its full configuration (as
canonical JSON), the dataset's SHA-256 and npconv's version (:func:`run_key`);
its folder is ``MODEL-`` plus the key's first 12 hex digits. A run whose
folder already holds a summary with status ``completed`` or ``diverged`` is not
trained again, so an interrupted sweep picks up where it stopped, and sweeps
(or studies) writing into the same ``OUT`` share their common runs.

**Determinism.** A run is a pure function of its configuration
(:func:`npconv.run.run_training` draws all randomness from the seed, and every
run uses one BLAS thread), and its files are written by this process whichever
executor trained it (:mod:`npconv.executors`), so ``results.csv`` is the same
bit for bit, but for the timing columns (:data:`TIMING_COLUMNS`), whether the
runs went through one process, a pool of local processes or a Dask cluster.

**Divergence.** A run whose loss becomes NaN or infinite stops, is recorded
with status ``diverged`` and its last finite figures, and the sweep goes on.
"""

import csv
import hashlib
import io
import itertools
import json
import math
import os
import signal
from dataclasses import asdict, dataclass, fields

from . import __version__, data, optim
from .errors import NpconvError
from .fileio import atomic_write, write_json
from .interrupt import Interrupted
from .models import DROPOUT_LOCATIONS, MODELS
from .run import OPTIMIZERS, TrainConfig
from .runfolder import DONE_STATUSES, last_finite_summary, read_history, read_summary

#: Options a grid can vary: the ``npconv train`` option (without ``--``) ->
#: (TrainConfig field, value type, accepted values or None).
GRID_OPTIONS = {
    "model": ("model", str, MODELS),
    "dataset": ("dataset", str, tuple(sorted(data.DATASETS))),
    "data-dir": ("data_dir", str, None),
    "epochs": ("epochs", int, None),
    "batch-size": ("batch_size", int, None),
    "optimizer": ("optimizer", str, OPTIMIZERS),
    "lr": ("lr", float, None),
    "lr-schedule": ("lr_schedule", str, optim.SCHEDULES),
    "momentum": ("momentum", float, None),
    "weight-decay": ("weight_decay", float, None),
    "dropout": ("dropout", float, None),
    "dropout-at": ("dropout_at", str, DROPOUT_LOCATIONS),
    "seed": ("seed", int, None),
    "train-subset": ("train_subset", int, None),
    "val-split": ("val_split", float, None),
    "dtype": ("dtype", str, ("float32", "float64")),
}
_FIELD_TYPE = {f: kind for f, kind, _ in GRID_OPTIONS.values()}

#: The figures of a run, in the order results.csv lists them.
METRIC_COLUMNS = ["train_loss", "train_acc", "test_loss", "test_acc"]
#: Wall-clock columns of results.csv: the only ones that differ between two sweeps of the same grid.
TIMING_COLUMNS = ["seconds", "seconds_per_epoch"]
CONFIG_COLUMNS = [f.name for f in fields(TrainConfig)]
RESULT_COLUMNS = ["run", "key", *CONFIG_COLUMNS, "status", "epochs_done", *METRIC_COLUMNS, *TIMING_COLUMNS]


# --------------------------------------------------------------------------- grids


def parse_values(option, text):
    """The list of values of one grid option, from ``"1e-4,1e-3"``.

    Raises :class:`NpconvError` naming the option for an unknown option, an
    empty list or item, a value of the wrong type or one not among the choices.
    Repeated values are kept once.
    """
    option = option.replace("_", "-")
    if option not in GRID_OPTIONS:
        known = ", ".join(f"--{o}" for o in GRID_OPTIONS)
        raise NpconvError(f"--{option} is not a training option; a grid can vary {known}")
    _, kind, choices = GRID_OPTIONS[option]
    items = [item.strip() for item in str(text).split(",")]
    if items == [""]:
        raise NpconvError(f"--{option}: empty list of values")
    values = []
    for item in items:
        if item == "":
            raise NpconvError(f"--{option}: empty value in {text!r}")
        try:
            value = kind(item)
        except ValueError:
            noun = {int: "an integer", float: "a number"}[kind]
            raise NpconvError(f"--{option}: {item!r} is not {noun}") from None
        if choices is not None and value not in choices:
            raise NpconvError(f"--{option}: {item!r} is not one of " + ", ".join(choices))
        if value not in values:
            values.append(value)
    return values


def parse_grid(options):
    """``{option: "a,b,c"}`` -> ``{TrainConfig field: [a, b, c]}``; options may use ``-`` or ``_``."""
    grid = {}
    for option, text in options.items():
        values = parse_values(option, text)  # checks that the option exists
        grid[GRID_OPTIONS[option.replace("_", "-")][0]] = values
    return grid


def make_config(**settings):
    """A :class:`TrainConfig` from settings, with each value coerced to its field's type.

    An integer given for a float field (``lr = 1`` in a TOML file) becomes a
    float, so the same setting always gives the same run key. Unknown settings
    and wrongly typed values raise :class:`NpconvError`.
    """
    known = {f.name for f in fields(TrainConfig)}
    values = {}
    for name, value in settings.items():
        if name not in known:
            raise NpconvError(f"{name!r} is not a training setting; known: " + ", ".join(sorted(known)))
        kind = _FIELD_TYPE.get(name, bool if name == "normalize" else None)
        if value is not None and kind is not None:
            accepted = (int, float) if kind is float else kind  # an int is a fine float
            is_bool = isinstance(value, bool)  # bool is an int subclass: only a bool field takes one
            if is_bool != (kind is bool) or not isinstance(value, accepted):
                raise NpconvError(f"{name} must be {kind.__name__}, got {value!r}")
            value = kind(value)
        values[name] = value
    return TrainConfig(**values)


def expand_grid(grid, base=None):
    """Every combination of a grid, as a list of :class:`TrainConfig`.

    ``grid`` maps TrainConfig fields to lists of values; ``base`` (a dict of
    settings) fills the fields the grid does not name (default: ``npconv
    train``'s defaults). Combinations follow TrainConfig's field order, the
    last field varying fastest.
    """
    base = dict(base or {})
    names = [f for f in CONFIG_COLUMNS if f in grid]
    combos = itertools.product(*(grid[n] for n in names))
    return [make_config(**{**base, **dict(zip(names, combo))}) for combo in combos]


# ----------------------------------------------------------------------- run keys


def canonical_config(config):
    """The config as a dict with every value of its field's type (floats as floats)."""
    out = asdict(config)
    for name, kind in _FIELD_TYPE.items():
        if out[name] is not None:
            out[name] = kind(out[name])
    return out


def run_key(config, dataset_sha256, version=__version__):
    """SHA-256 (hex) of the full configuration, the dataset's SHA-256 and npconv's version."""
    payload = {"config": canonical_config(config), "dataset_sha256": dataset_sha256, "npconv_version": version}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def describe(config, names):
    """``"mlp lr=0.001 seed=1"``: the model and the named settings of a config, for progress lines."""
    return " ".join([config.model] + [f"{n}={getattr(config, n)}" for n in names if n != "model"])


# -------------------------------------------------------------------------- plans


@dataclass
class Run:
    """One run of a sweep: its configuration, key, folder and (once known) its outcome.

    ``status`` is ``pending`` (not trained yet), ``completed``, ``diverged`` or
    ``failed`` (an unexpected error, recorded in ``message``; retried next time).
    """

    config: TrainConfig
    key: str
    folder: str
    dataset_sha256: str
    train_size: int
    val_size: int
    test_size: int
    status: str = "pending"
    summary: dict | None = None
    message: str | None = None
    reused: bool = False  # done before this sweep started (trained by an earlier sweep)

    @property
    def done(self):
        return self.status in DONE_STATUSES


def load_datasets(configs):
    """Each distinct dataset the configs use, loaded once: ``{(name, data_dir): Dataset}``."""
    datasets = {}
    for config in configs:
        where = (config.dataset, config.data_dir)
        if where not in datasets:
            datasets[where] = data.load_dataset(*where)
    return datasets


def plan(configs, out_dir, datasets=None):
    """Validate every config and name its run; returns the distinct runs, in order.

    Everything a user can get wrong (a bad value, a combination such as
    dropout before pooling in the MLP, a training subset larger than the
    dataset) raises :class:`NpconvError` here, before anything is trained.
    Runs whose folder already holds a completed or diverged run come back with
    that status and summary.
    """
    for config in configs:
        config.validate()
    datasets = load_datasets(configs) if datasets is None else datasets
    runs, seen = [], set()
    for config in configs:
        dataset = datasets[(config.dataset, config.data_dir)]
        n_train = len(dataset.train_labels)
        if config.train_subset is not None and config.train_subset > n_train:
            raise NpconvError(
                f"--train-subset must be at most the {n_train} training images, got {config.train_subset}")
        key = run_key(config, dataset.sha256)
        if key in seen:
            continue
        seen.add(key)
        n = config.train_subset or n_train
        val_size = int(round(n * config.val_split))  # about what data.train_val_split holds out
        run = Run(config, key, os.path.join(out_dir, "runs", f"{config.model}-{key[:12]}"), dataset.sha256,
                  n - val_size, val_size, len(dataset.test_labels))
        summary = _safe_summary(run.folder)
        if summary is not None and summary["status"] in DONE_STATUSES:
            run.status, run.summary, run.reused = summary["status"], summary, True
        runs.append(run)
    return runs


def _safe_summary(folder):
    try:
        return read_summary(folder)
    except NpconvError:  # damaged: the run is trained again
        return None


# ------------------------------------------------------------- storing a result


def store_result(run, result):
    """Write a run's files (returned by :func:`npconv.executors.train_in_temp`) into its folder.

    Every file is written atomically and ``summary.json`` last, so a folder
    with a summary is complete. The summary's ``out_dir`` becomes the run's
    folder here and it always carries a ``status``; a run that diverged
    without writing a summary gets one from its last finite epoch. A failed
    run writes only ``error.txt`` (and no summary, so it is retried).
    """
    run.status, run.message = result["status"], result.get("message")
    os.makedirs(run.folder, exist_ok=True)
    files = dict(result.get("files", {}))
    if run.status == "failed":
        with atomic_write(os.path.join(run.folder, "error.txt"), "w") as f:
            f.write(result.get("traceback") or run.message or "failed\n")
        return
    summary_bytes = files.pop("summary.json", None)
    for name, content in sorted(files.items()):
        with atomic_write(os.path.join(run.folder, name)) as f:
            f.write(content)
    if summary_bytes is not None:
        summary = json.loads(summary_bytes)
    else:  # diverged before a summary existed: the last finite figures
        summary = last_finite_summary(read_history(os.path.join(run.folder, "history.csv")))
    summary["out_dir"] = run.folder
    summary.setdefault("status", run.status)
    run.status = summary["status"]
    if run.status == "diverged":
        summary["status"] = "diverged"
        summary.setdefault("message", run.message)
        _plot_if_missing(run)
    run.summary = summary
    write_json(os.path.join(run.folder, "summary.json"), summary)


def _plot_if_missing(run):
    """Curves for a diverged run, from its history, when training stopped before plotting them."""
    path = os.path.join(run.folder, "curves.png")
    history = [h for h in read_history(os.path.join(run.folder, "history.csv"))
               if all(math.isfinite(v) for v in h.values())]
    if os.path.exists(path) or not history:
        return
    from types import SimpleNamespace

    from .plotting import plot_curves

    plot_curves([SimpleNamespace(**h) for h in history], path,
                title=f"{run.config.model} on {run.config.dataset} (diverged)")


# ---------------------------------------------------------------- results files


def varying_settings(runs):
    """The config fields whose values differ between the runs, in field order."""
    return [n for n in CONFIG_COLUMNS if len({repr(getattr(r.config, n)) for r in runs}) > 1]


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
        s = run.summary or {}
        row = {"run": os.path.relpath(run.folder, out_dir), "key": run.key, **asdict(run.config),
               "status": run.status, "epochs_done": s.get("epochs"),
               **{c: s.get(c) for c in METRIC_COLUMNS},
               "seconds": s.get("total_seconds"), "seconds_per_epoch": s.get("seconds_per_epoch")}
        writer.writerow([_cell(row[c]) for c in RESULT_COLUMNS])
    return buf.getvalue()


def _pct(value):
    return "" if value is None or not math.isfinite(value) else f"{100 * value:.2f}"


def _num(value, digits=4):
    return "" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def results_md(runs, out_dir):
    """``results.md`` text: a Markdown table with the varying settings and the figures."""
    names = varying_settings(runs)
    head = ["run", *names, "train loss", "train acc %", "test loss", "test acc %", "seconds", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in runs:
        s = run.summary or {}
        rel = os.path.relpath(run.folder, out_dir)
        cells = [f"[{os.path.basename(run.folder)}]({rel})", *(str(getattr(run.config, n)) for n in names),
                 _num(s.get("train_loss")), _pct(s.get("train_acc")), _num(s.get("test_loss")),
                 _pct(s.get("test_acc")), _num(s.get("total_seconds"), 1), run.status]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(runs, out_dir):
    """Write ``results.csv`` and ``results.md`` into ``out_dir`` (atomically)."""
    with atomic_write(os.path.join(out_dir, "results.csv"), "w") as f:
        f.write(results_csv(runs, out_dir))
    with atomic_write(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(results_md(runs, out_dir))


# ------------------------------------------------------------------ the sweep


def format_seconds(seconds):
    """``"1 h 05 min"``, ``"12 min 30 s"``, ``"45 s"``."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"


def run_sweep(configs, out_dir, *, workers=None, scheduler=None, progress=True, estimate=True, log=print,
              dry_run=False):
    """Train every config not already done into ``out_dir``; returns the list of :class:`Run`.

    Parameters
    ----------
    configs : list of TrainConfig
        The runs (duplicates are trained once).
    out_dir : str
        The sweep folder: ``runs/``, ``results.csv`` and ``results.md`` go here.
    workers : int, optional
        Local worker processes (default: the number of cores); 1 trains in
        this process, with a progress bar per run.
    scheduler : str, optional
        ``tcp://HOST:PORT`` of a Dask distributed scheduler: every run is a
        task on that cluster (``workers`` is then ignored).
    progress : bool
        Progress lines (and, with one worker, the current run's progress bar).
    estimate : bool
        Time a few batches of each distinct model setting and print an estimate of the total time.
    log : callable
        Where progress lines go.
    dry_run : bool
        Only print the plan and the estimate: nothing is trained or written.

    Ctrl-C stops the sweep: the runs already completed are kept, ``results.csv``
    lists the rest as ``pending``, and :class:`KeyboardInterrupt` propagates.
    """
    from . import executors
    from .estimate import estimate_sweep

    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise NpconvError(f"--out {out_dir}: exists and is not a directory")
    for config in configs:  # before anything is loaded or written
        config.validate()
    datasets = load_datasets(configs)
    runs = plan(configs, out_dir, datasets)
    pending = [r for r in runs if not r.done]
    names = varying_settings(runs)
    executor = executors.make_executor(workers, scheduler, len(pending))
    line = f"{len(runs)} runs ({len(runs) - len(pending)} already done)"
    if pending:
        line += f", {len(pending)} to train on {executor.description}"
        if estimate or dry_run:
            seconds, what = estimate_sweep(pending, datasets, executor.slots)
            line += f"; estimated {format_seconds(seconds)} ({what})"
    log(line)
    if dry_run:
        executor.close()
        return runs
    try:
        os.makedirs(os.path.join(out_dir, "runs"), exist_ok=True)
    except OSError as e:
        raise NpconvError(f"--out {out_dir}: cannot create the folder ({e.strerror})") from None
    write_results(runs, out_dir)

    def on_start(index, run):
        if progress:
            log(f"[{index}/{len(pending)}] {describe(run.config, names)} "
                f"-> {run.folder} ({len(pending) - index} left after it)")

    done = 0
    try:
        for run, result in executor.map(pending, on_start=on_start, progress=progress):
            store_result(run, executors.check_result(run, result))
            write_results(runs, out_dir)
            done += 1
            if progress or run.status == "failed":
                log(f"[{done}/{len(pending)} done, {len(pending) - done} left] {_outcome(run, names)}")
    except KeyboardInterrupt as e:
        # The run being trained lived in a temporary folder, gone now: there is
        # nothing to resume but the sweep itself.
        write_results(runs, out_dir)
        kept = sum(r.done for r in runs)
        log(f"interrupted: {kept} of {len(runs)} runs are done and kept in {out_dir}; "
            "run the same command again to train the rest")
        raise Interrupted(getattr(e, "signum", signal.SIGINT)) from None
    write_results(runs, out_dir)
    return runs


def _outcome(run, names):
    s = run.summary or {}
    what = f"{describe(run.config, names)}: {run.status}"
    if s.get("test_acc") is not None:
        what += f", test accuracy {100 * s['test_acc']:.2f}%"
    if s.get("total_seconds") is not None:
        what += f" ({s['total_seconds']:.1f} s training)"
    if run.status in ("failed", "diverged") and run.message:
        what += f": {run.message}"
    return what
