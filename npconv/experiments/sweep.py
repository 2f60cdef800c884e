"""Sweeps: one training run per point of a grid of settings, each in its own run folder.

A grid gives training settings lists of values (``lr = [1e-4, 1e-3]``,
``seed = [0, 1, 2]``; on the command line ``--lr 1e-4,1e-3 --seed 0,1,2``);
the sweep trains every combination, in
:class:`~npconv.train.settings.TrainConfig` field order, and writes::

    OUT/runs/MODEL-KEY/     one run folder per setting: the files of ``npconv train``
    OUT/results.csv         one row per run: every setting, the final figures, seconds, status
    OUT/results.md          the same as a GitHub Markdown table (only the settings that vary)

Every setting can be swept: a grid's keys are the settings of
:data:`npconv.train.settings.SETTINGS`.

**Run keys.** A run is named by the SHA-256 of its full configuration (as
canonical JSON), the dataset's SHA-256 and npconv's version (:func:`run_key`);
its folder is ``MODEL-`` plus the key's first 12 hex digits (``MODEL`` an architecture
file's name without ``.toml``). The key of a run of an architecture file hashes the file's layers too
(:meth:`~npconv.train.settings.TrainConfig.canonical`), so it changes when the
file's architecture changes. A run whose
folder already holds a summary with status ``completed`` or ``diverged`` is not
trained again, so an interrupted sweep picks up where it stopped, and sweeps
(or studies) writing into the same ``OUT`` share their common runs.

**Determinism.** A run is a pure function of its configuration
(:func:`npconv.train.run_training` draws all randomness from the seed, and every
run uses one BLAS thread), and its files are written by this process whichever
executor trained it (:mod:`npconv.experiments.executors`), so ``results.csv``
is the same bit for bit, but for the timing columns, whether the runs went
through one process, a pool of local processes or a Dask cluster.

**Divergence.** A run whose loss becomes NaN or infinite stops, is recorded
with status ``diverged`` and its last finite figures, and the sweep goes on.
"""

import hashlib
import itertools
import json
import os
import signal
from dataclasses import dataclass

from .. import __version__, data
from .. import backend as B
from ..errors import NpconvError, SettingError
from ..models import model_label
from ..io import locked_by
from ..train.interrupt import Interrupted
from ..train.run import check_subset, settings_with_initial
from ..train.runfolder import CHECKPOINT_FILE, RunFolder, check_folder
from ..train.settings import SETTINGS, TrainConfig, make_config
from ..text import WIDTH, format_seconds, plural, shorten
from .results import describe, typical_values, write_results


# --------------------------------------------------------------------------- grids


def parse_values(name, text):
    """The list of values of one setting, from ``"1e-4,1e-3"``; repeated values are kept once.

    ``name`` is a setting's name (``weight_decay``; ``weight-decay`` is accepted
    too). Raises :class:`~npconv.errors.SettingError` naming the setting for an
    unknown one, an empty list or item, a value of the wrong type or out of its range.
    """
    name = name.replace("-", "_")
    spec = SETTINGS.get(name)
    if spec is None:
        raise SettingError(name, "is not a training setting; a grid can vary " + ", ".join(SETTINGS))
    items = [item.strip() for item in str(text).split(",")]
    if items == [""]:
        raise SettingError(name, ": empty list of values")
    values = []
    for item in items:
        if item == "":
            raise SettingError(name, f": empty value in {text!r}")
        value = spec.parse(item)
        if spec.choices is not None and not spec.is_choice(value):
            raise SettingError(name, f": {item!r} is not {spec.accepted()}")
        if value not in values:
            values.append(value)
    return values


def parse_grid(texts):
    """``{setting: "a,b,c"}`` -> ``{setting: [a, b, c]}``; names may use ``-`` or ``_``."""
    return {name.replace("-", "_"): parse_values(name, text) for name, text in texts.items()}


def expand_grid(grid, base=None):
    """Every combination of a grid, as a list of :class:`TrainConfig`.

    ``grid`` maps settings to lists of values; ``base`` (a dict of settings)
    fills the settings the grid does not name (default: ``npconv train``'s
    defaults). Combinations follow the settings' order, the last varying fastest.
    """
    base = dict(base or {})
    names = [name for name in SETTINGS if name in grid]
    combos = itertools.product(*(grid[n] for n in names))
    # A run started from a model file without a model given trains the file's architecture.
    return [make_config(settings_with_initial({**base, **dict(zip(names, combo))})) for combo in combos]


# ----------------------------------------------------------------------- run keys


def run_key(config, dataset_sha256, version=__version__):
    """SHA-256 (hex) of the full configuration, the dataset's SHA-256 and npconv's version."""
    payload = {"config": config.canonical(), "dataset_sha256": dataset_sha256, "npconv_version": version}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


# -------------------------------------------------------------------------- plans


@dataclass
class Run:
    """One run of a sweep: its configuration, key, folder and (once known) its outcome.

    ``status`` is ``pending`` (not trained yet), ``interrupted`` (cut off
    midway: its folder holds the checkpoint of epoch ``epochs_done``, and the
    next sweep resumes it), ``completed``, ``diverged`` or ``failed`` (an
    unexpected error, recorded in ``message``; retried next time).
    ``summary`` is the run's :class:`~npconv.train.runfolder.Summary` once it has one.
    """

    config: TrainConfig
    key: str
    folder: RunFolder
    dataset_sha256: str
    train_size: int
    val_size: int
    test_size: int
    status: str = "pending"
    summary: object = None
    message: str | None = None
    reused: bool = False  # done before this sweep started (trained by an earlier sweep)
    epochs_done: int = 0  # epochs already trained: a run cut off midway resumes after them

    @property
    def done(self):
        return self.summary is not None and self.summary.done


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
    that status and summary; runs cut off midway, whose folder holds a
    checkpoint, come back ``interrupted`` with their ``epochs_done``.
    """
    for config in configs:
        config.validate()
    datasets = load_datasets(configs) if datasets is None else datasets
    runs, seen = [], set()
    for config in configs:
        dataset = datasets[(config.dataset, config.data_dir)]
        n = check_subset(config, len(dataset.train_labels))
        key = run_key(config, dataset.sha256)
        if key in seen:
            continue
        seen.add(key)
        val_size = int(round(n * config.val_split))  # about what data.train_val_split holds out
        folder = RunFolder(os.path.join(out_dir, "runs", f"{model_label(config.model)}-{key[:12]}"))
        run = Run(config, key, folder, dataset.sha256, n - val_size, val_size, len(dataset.test_labels))
        read_state(run)
        run.reused = run.done
        runs.append(run)
    return runs


def read_state(run):
    """Set a run's status from its folder: done (completed, diverged), ``interrupted`` (a checkpoint to resume
    from, and no process training it now), else left as it is."""
    summary = _summary_or_none(run.folder)
    if summary is not None and summary.done:
        run.status, run.summary = summary.status, summary
    elif os.path.exists(run.folder.file(CHECKPOINT_FILE)) and not locked_by(run.folder.path):
        # cut off midway (Ctrl-C, a crash, kill -9); a locked one is being trained by another sweep
        run.status, run.summary, run.epochs_done = "interrupted", summary, _epochs_done(run.folder)


def _epochs_done(folder):
    """The epochs a run cut off midway has done (its history and checkpoint are written together)."""
    try:
        return len(folder.read_history())
    except NpconvError:
        return 0


def _summary_or_none(folder):
    try:
        return folder.read_summary()
    except NpconvError:  # damaged: the run is trained again
        return None


def store_result(run, result):
    """Record a run's outcome (from :func:`npconv.experiments.executors.train_task`).

    A run trained elsewhere (a Dask worker) returns its files, written into
    its folder here; a run trained in its folder has written them already.
    A failed run adds ``error.txt`` (and no summary of its own, so it is retried).
    """
    run.status, run.message = result["status"], result.get("message")
    if run.status == "failed":
        run.folder.write_error(result.get("traceback") or run.message or "failed\n")
        return
    if "files" in result:
        run.summary = run.folder.store(result["files"])
    else:
        run.summary = run.folder.read_summary()
    run.status = run.summary.status if run.summary is not None else "failed"


# ------------------------------------------------------------------ the sweep


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

    Ctrl-C stops the sweep: the runs already completed are kept, the runs
    being trained keep the checkpoint of their last completed epoch (the next
    sweep resumes them), ``results.csv`` lists the rest as ``pending``, and
    :class:`KeyboardInterrupt` propagates.
    """
    from . import executors
    from .estimate import estimate_sweep

    out_dir = os.fspath(out_dir)
    check_folder(out_dir, "out_dir")
    for config in configs:  # before anything is loaded or written
        config.validate()
    for device in sorted({config.device for config in configs}):
        with B.on_device(device):  # a device that cannot be used (no CuPy, no GPU) is one error, up front
            pass
    datasets = load_datasets(configs)
    runs = plan(configs, out_dir, datasets)
    pending = [r for r in runs if not r.done]
    resumed = sum(r.status == "interrupted" for r in pending)
    modes = typical_values(runs)
    executor = executors.make_executor(workers, scheduler, len(pending))
    line = f"{plural(len(runs), 'run')}: {len(runs) - len(pending)} already done, {len(pending)} to train"
    if resumed:
        line += f" ({resumed} to resume)"
    log(line + (f" on {executor.description}" if pending else ""))
    if pending and (estimate or dry_run):
        seconds, what = estimate_sweep(pending, datasets, executor.slots)
        log(f"estimated {format_seconds(seconds)} ({what})")
    if dry_run:
        executor.close()
        return runs
    try:
        os.makedirs(os.path.join(out_dir, "runs"), exist_ok=True)
    except OSError as e:
        raise SettingError("out_dir", f"{out_dir}: cannot create the folder ({e.strerror})") from None
    write_results(runs, out_dir)
    width = len(str(len(pending)))

    def on_start(index, run):
        if progress:
            head = f"[{index:>{width}}/{len(pending)}] "
            tail = f" -> {os.path.relpath(run.folder.path, out_dir)}"
            if run.status == "interrupted":
                tail += f" (resuming after epoch {run.epochs_done})"
            log(head + describe(run.config, modes, WIDTH - len(head) - len(tail)) + tail)

    done = 0
    try:
        for run, result in executor.map(pending, on_start=on_start, progress=progress):
            store_result(run, executors.check_result(run, result))
            write_results(runs, out_dir)
            if result["status"] == "interrupted":  # Ctrl-C reached this process's run (perhaps as it completed)
                raise Interrupted(result.get("signum", signal.SIGINT))
            done += 1
            if progress or run.status == "failed":
                head = f"[{done:>{width}}/{len(pending)} done] "
                log(head + _outcome(run, modes, WIDTH - len(head)))
    except KeyboardInterrupt as e:
        for run in runs:  # a worker may have finished a run, or recorded its checkpoint, as it was stopped
            if not run.done:
                read_state(run)
        write_results(runs, out_dir)
        kept = sum(r.done for r in runs)
        cut = sum(r.status == "interrupted" for r in runs)
        log(f"interrupted: {kept} of {len(runs)} runs done" + (f", {cut} to resume" if cut else "")
            + "; run the same command again to go on")
        raise Interrupted(getattr(e, "signum", signal.SIGINT)) from None
    write_results(runs, out_dir)
    return runs


def _outcome(run, modes, width):
    """``cnn lr=0.1 seed=2: completed, 98.48% test (133.3 s)``, in at most ``width`` columns."""
    s = run.summary
    what = f": {run.status}"
    if s is not None and s.test_acc is not None:
        what += f", {100 * s.test_acc:.2f}% test"
    if run.status == "completed" and s is not None and s.total_seconds is not None:
        what += f" ({s.total_seconds:.1f} s)"
    if run.status in ("failed", "diverged") and run.message:
        what += f": {run.message}"
    name = describe(run.config, modes, max(width - len(what), width // 2))
    return shorten(name + what, width)
