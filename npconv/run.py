"""``npconv train`` as a function: a :class:`TrainConfig` in, a run folder out.

A run folder holds:

==================  ==========================================================
``config.json``     every setting, plus the dataset's SHA-256 and npconv's version
``history.csv``     one row per epoch: ``epoch,train_loss,train_acc,test_loss,test_acc,seconds``
                    (accuracies as fractions; ``val_loss,val_acc`` follow with ``--val-split``)
``health.csv``      per layer per epoch: gradient norm, update/weight ratio, dead ReLUs,
                    saturated sigmoid/tanh units (:mod:`npconv.health`)
``checkpoint.npz``  the state after the last completed epoch (:mod:`npconv.checkpoint`)
``summary.json``    ``status`` (completed, diverged or interrupted), the last epoch's
                    metrics, the seconds, the advice given
``model.npz``       weights and architecture (:mod:`npconv.serialization`), once completed
``curves.png``      loss and accuracy curves, train and test, once completed
``.lock``           held while a process writes into the folder (:func:`npconv.fileio.lock_dir`)
==================  ==========================================================

Every file is written atomically. At the end of each epoch the history, the
health figures and the checkpoint are written together (a signal waits until
all three are on disk), so they always describe the same epoch.

:func:`run_training` starts a run; :func:`resume_training` continues one from
its checkpoint. A run that diverges (:class:`~npconv.training.TrainingDiverged`)
or is interrupted (:class:`~npconv.interrupt.Interrupted`) records that in
``summary.json``, keeps the checkpoint of its last completed (finite) epoch and
re-raises, so a caller such as a sweep can mark it and go on.

All randomness comes from one seed: :class:`numpy.random.SeedSequence` ``(seed)``
is split into independent streams for the initial weights, the data (subset,
validation split, per-epoch shuffling) and the dropout masks, so the same seed
on the same machine gives the same ``history.csv`` bit for bit (but for the
``seconds`` column, which is a wall-clock time) -- also when the run was
interrupted and resumed at any epoch boundary.
"""

import csv
import io
import json
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, fields

import numpy as np

from . import __version__, data, nn, optim
from .checkpoint import CHECKPOINT_FILE, load_checkpoint, restore, save_checkpoint
from .errors import CheckpointError, NpconvError
from .fileio import atomic_write, lock_dir, write_json
from .health import HealthMonitor, advise, health_csv, probe_batch
from .interrupt import Interrupted, deferred_interrupts
from .models import DROPOUT_LOCATIONS, MODELS, build_model
from .serialization import save_model
from .training import TrainingDiverged, fit

OPTIMIZERS = ("sgd", "adam")
HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "seconds"]

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
HEALTH_FILE = "health.csv"
SUMMARY_FILE = "summary.json"
MODEL_FILE = "model.npz"
CURVES_FILE = "curves.png"

# The type each setting must have in a config.json read back for --resume.
_SETTING_TYPES = {
    "model": str, "dataset": str, "data_dir": (str, type(None)), "epochs": int, "batch_size": int,
    "optimizer": str, "lr": (int, float), "lr_schedule": str, "momentum": (int, float),
    "weight_decay": (int, float), "dropout": (int, float), "dropout_at": str, "seed": int,
    "train_subset": (int, type(None)), "val_split": (int, float), "normalize": bool, "dtype": str,
}


@dataclass
class TrainConfig:
    """Every setting of a training run; the defaults are ``npconv train``'s.

    The defaults reach >= 99.0 % test accuracy on MNIST with ``cnn`` and
    >= 97.8 % with ``mlp`` in 10 epochs (figures in the README).
    """

    model: str = "cnn"
    dataset: str = "mnist"
    data_dir: str | None = None
    epochs: int = 10
    batch_size: int = 100
    optimizer: str = "sgd"
    lr: float = 0.05
    lr_schedule: str = "cosine"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    dropout: float = 0.0
    dropout_at: str = "before-fc"
    seed: int = 0
    train_subset: int | None = None
    val_split: float = 0.0
    normalize: bool = True
    dtype: str = "float32"

    def validate(self):
        """Raise :class:`NpconvError` naming the first setting out of its range."""

        def bad(option, accepted, value):
            raise NpconvError(f"--{option.replace('_', '-')} must be {accepted}, got {value!r}")

        def finite(value):
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        def integer(value):
            return isinstance(value, int) and not isinstance(value, bool)

        if self.model not in MODELS:
            bad("model", "one of " + ", ".join(MODELS), self.model)
        if self.dataset not in data.DATASETS:
            bad("dataset", "one of " + ", ".join(data.DATASETS), self.dataset)
        if self.optimizer not in OPTIMIZERS:
            bad("optimizer", "one of " + ", ".join(OPTIMIZERS), self.optimizer)
        if self.lr_schedule not in optim.SCHEDULES:
            bad("lr_schedule", "one of " + ", ".join(optim.SCHEDULES), self.lr_schedule)
        if self.dropout_at not in DROPOUT_LOCATIONS:
            bad("dropout_at", "one of " + ", ".join(DROPOUT_LOCATIONS), self.dropout_at)
        if self.model == "mlp" and self.dropout > 0 and self.dropout_at != "before-fc":
            bad("dropout_at", "before-fc for the mlp model (it has no conv or pool layers)", self.dropout_at)
        for option in ("epochs", "batch_size"):
            value = getattr(self, option)
            if not integer(value) or value < 1:
                bad(option, "an integer >= 1", value)
        if not integer(self.seed) or self.seed < 0:
            bad("seed", "an integer >= 0", self.seed)
        if self.train_subset is not None and (not integer(self.train_subset) or self.train_subset < 1):
            bad("train_subset", "an integer >= 1", self.train_subset)
        if not (finite(self.lr) and self.lr > 0):
            bad("lr", "a finite number > 0", self.lr)
        if not (finite(self.momentum) and 0 <= self.momentum < 1):
            bad("momentum", "in [0, 1)", self.momentum)
        if not (finite(self.weight_decay) and self.weight_decay >= 0):
            bad("weight_decay", "a finite number >= 0", self.weight_decay)
        if not (finite(self.dropout) and 0 <= self.dropout < 1):
            bad("dropout", "in [0, 1)", self.dropout)
        if not (finite(self.val_split) and 0 <= self.val_split < 1):
            bad("val_split", "in [0, 1)", self.val_split)
        if self.dtype not in ("float32", "float64"):
            bad("dtype", "float32 or float64", self.dtype)
        if not isinstance(self.normalize, bool):
            bad("normalize", "true or false", self.normalize)
        if self.data_dir is not None and not os.path.isdir(self.data_dir):
            problem = "not a directory" if os.path.exists(self.data_dir) else "no such directory"
            raise NpconvError(f"--data-dir {self.data_dir}: {problem}")

    @classmethod
    def from_dict(cls, settings, where):
        """The config saved in a run folder's ``config.json`` (types checked here, ranges by :meth:`validate`).

        ``where`` names the file in messages. Extra keys (the dataset's digest,
        the normalization, ...) are ignored.
        """
        kwargs = {}
        for f in fields(cls):
            if f.name not in settings:
                raise CheckpointError(f"{where}: the setting {f.name!r} is missing")
            value = settings[f.name]
            wanted = _SETTING_TYPES[f.name]
            if not isinstance(value, wanted) or (isinstance(value, bool) and wanted is not bool):
                raise CheckpointError(f"{where}: the setting {f.name!r} has the wrong type ({value!r})")
            kwargs[f.name] = value
        return cls(**kwargs)


def seed_streams(seed):
    """Three independent generators from one seed: ``(init_rng, data_rng, dropout_rng)``.

    ``init`` draws the initial weights; ``data`` the training subset, the
    validation split and each epoch's shuffle; ``dropout`` the dropout masks.
    """
    return tuple(np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))


def default_out_dir(config, root="runs"):
    """A new folder name under ``root``: ``runs/cnn-mnist-20261127-101500`` (suffixed if taken)."""
    stem = os.path.join(root, f"{config.model}-{config.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
    out, n = stem, 1
    while os.path.exists(out):
        n += 1
        out = f"{stem}-{n}"
    return out


def check_out_dir(out_dir):
    """A clear error if ``out_dir`` exists and is not a folder (checked before any work)."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise NpconvError(f"--out {out_dir}: exists and is not a directory")


def prepare_out_dir(out_dir):
    """Create ``out_dir`` (and parents); a clear error if it is a file or cannot be made."""
    check_out_dir(out_dir)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise NpconvError(f"--out {out_dir}: cannot create the folder ({e.strerror})") from None


def make_optimizer(config, params):
    if config.optimizer == "adam":
        return optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def format_epoch(stats, epochs):
    line = (
        f"epoch {stats.epoch:>{len(str(epochs))}}/{epochs}  "
        f"train loss {stats.train_loss:.4f} acc {100 * stats.train_acc:6.2f}%  "
        f"test loss {stats.test_loss:.4f} acc {100 * stats.test_acc:6.2f}%  "
    )
    if stats.val_loss is not None:
        line += f"val loss {stats.val_loss:.4f} acc {100 * stats.val_acc:6.2f}%  "
    return line + f"{stats.seconds:6.1f} s"


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


@dataclass
class _Run:
    """Everything a run trains with, built the same way for a new and a resumed run."""

    config: TrainConfig
    full_config: dict       # what config.json holds
    model: nn.Sequential
    optimizer: optim.Optimizer
    loss_fn: nn.SoftmaxCrossEntropyLoss
    batches: data.DataLoader
    x_test: np.ndarray
    test_labels: np.ndarray
    val: tuple | None
    probe: np.ndarray       # the health probe batch
    rngs: dict              # the generators the epochs draw from, by name
    num_classes: int


def _prepare(config):
    """Load the data and build model and optimizer, drawing from the seed's streams in a fixed order.

    A resumed run calls this too, then overwrites the state from its
    checkpoint: the subset and split come out the same because they are drawn
    the same way, before any epoch.
    """
    dataset = data.load_dataset(config.dataset, config.data_dir)
    n_train = len(dataset.train_labels)
    if config.train_subset is not None:
        if config.train_subset > n_train:
            raise NpconvError(f"--train-subset must be at most the {n_train} training images, got {config.train_subset}")
        n_train = config.train_subset
    if config.val_split > 0:
        n_val = round(config.val_split * n_train)
        if not 1 <= n_val < n_train:
            raise NpconvError(
                f"--val-split {config.val_split} of {n_train} training images gives {n_val} validation images; "
                f"it must leave at least one image for validation and one for training"
            )

    init_rng, data_rng, dropout_rng = seed_streams(config.seed)
    dtype = np.dtype(config.dtype)

    mean, std = data.pixel_stats(dataset.train_images) if config.normalize else (None, None)
    train_images, train_labels = dataset.train_images, dataset.train_labels
    if config.train_subset is not None:
        train_images, train_labels = data.random_subset(train_images, train_labels, config.train_subset, data_rng)
    val = None
    if config.val_split > 0:
        train_images, train_labels, val_images, val_labels = data.train_val_split(
            train_images, train_labels, config.val_split, data_rng
        )
        val = (data.to_float(val_images, mean, std, dtype), val_labels)
    x_train = data.to_float(train_images, mean, std, dtype)
    x_test = data.to_float(dataset.test_images, mean, std, dtype)
    batches = data.DataLoader(x_train, train_labels, config.batch_size, shuffle=True, rng=data_rng)

    num_classes = len(dataset.classes)
    model = build_model(
        config.model, config.dropout, config.dropout_at, num_classes=num_classes,
        rng=init_rng, dtype=dtype,
    )
    # One generator for every dropout layer, separate from the data's.
    for layer in model:
        if isinstance(layer, nn.Dropout):
            layer.rng = dropout_rng
    full_config = {
        **asdict(config), "num_classes": num_classes, "classes": list(dataset.classes),
        "normalize_mean": mean, "normalize_std": std, "dataset_sha256": dataset.sha256,
        "train_size": int(len(train_labels)), "npconv_version": __version__,
    }
    return _Run(
        config=config, full_config=full_config, model=model,
        optimizer=make_optimizer(config, model.parameters()), loss_fn=nn.SoftmaxCrossEntropyLoss(),
        batches=batches, x_test=x_test, test_labels=dataset.test_labels, val=val, probe=probe_batch(x_train),
        rngs={"data": data_rng, "dropout": dropout_rng}, num_classes=num_classes,
    )


def run_training(config, out_dir=None, *, progress=True, log=print):
    """Train as ``config`` says and write the run folder; returns the summary dict.

    Everything the user can get wrong is checked before anything is written.
    ``out_dir`` must not hold a run already (continue one with
    :func:`resume_training`); it is locked while training.

    Raises
    ------
    NpconvError
        A bad setting, missing or malformed data, an unusable or busy ``out_dir``.
    TrainingDiverged
        After recording ``status: diverged`` in ``summary.json``.
    Interrupted
        (a ``KeyboardInterrupt``) after recording ``status: interrupted``.
    """
    config.validate()
    out_dir = default_out_dir(config) if out_dir is None else str(out_dir)
    check_out_dir(out_dir)
    run = _prepare(config)
    prepare_out_dir(out_dir)
    with lock_dir(out_dir):
        for name in (CONFIG_FILE, CHECKPOINT_FILE):
            if os.path.exists(os.path.join(out_dir, name)):
                raise NpconvError(
                    f"--out {out_dir}: already holds a run ({name}); continue it with --resume {out_dir}, "
                    "or choose another folder"
                )
        write_json(os.path.join(out_dir, CONFIG_FILE), run.full_config)
        log(f"training {config.model} on {config.dataset} ({len(run.batches.y)} images) "
            f"for {config.epochs} epochs -> {out_dir}")
        return _train(run, out_dir, None, progress=progress, log=log)


def resume_training(run_dir, *, epochs=None, settings=None, progress=True, log=print):
    """Continue the run in ``run_dir`` from its checkpoint; returns the summary dict.

    The settings come from ``run_dir/config.json``. ``epochs``, if given,
    changes the number of epochs (it must exceed the epochs already done; with
    the cosine schedule the remaining epochs then follow the schedule for the
    new total, so the run is no longer identical to any uninterrupted one).
    ``settings`` (e.g. options given on the command line) must each equal the
    run's own; a different value is an error, not a change.

    Resumed with the same number of epochs, the run's final ``history.csv``
    (but for the ``seconds`` column), ``health.csv`` and ``model.npz`` are
    bit-identical to those of an uninterrupted run.

    Raises
    ------
    NpconvError
        ``run_dir`` is not a run folder, is busy, has no usable checkpoint,
        already finished, diverged, or its data changed; a conflicting setting.
    TrainingDiverged, Interrupted
        As :func:`run_training`.
    """
    run_dir = str(run_dir)
    if not os.path.isdir(run_dir):
        problem = "not a directory" if os.path.exists(run_dir) else "no such directory"
        raise NpconvError(f"--resume {run_dir}: {problem}")
    config_path = os.path.join(run_dir, CONFIG_FILE)
    checkpoint_path = os.path.join(run_dir, CHECKPOINT_FILE)
    not_a_run = f"--resume {run_dir}: no {CONFIG_FILE}; not an npconv run folder"
    if not os.path.exists(config_path):  # checked before locking, so that nothing is written into such a folder
        raise CheckpointError(not_a_run)
    with lock_dir(run_dir):
        saved = _read_json(config_path, not_a_run)
        config = TrainConfig.from_dict(saved, config_path)
        for name, value in (settings or {}).items():
            if name != "epochs" and getattr(config, name) != value:
                raise NpconvError(
                    f"--{name.replace('_', '-')} {value} conflicts with the run's {getattr(config, name)!r} "
                    f"({config_path}); --resume continues a run with its own settings (only --epochs may change)"
                )
        if epochs is not None:
            config.epochs = epochs
        config.validate()
        if not os.path.exists(checkpoint_path):
            raise CheckpointError(
                f"--resume {run_dir}: no {CHECKPOINT_FILE} to resume from "
                "(the run stopped before it finished its first epoch); start it again instead"
            )
        checkpoint = load_checkpoint(checkpoint_path)
        if _without(checkpoint.config, "epochs") != _without(saved, "epochs"):
            raise CheckpointError(f"{checkpoint_path}: belongs to another run than {config_path}")
        status = _read_json(os.path.join(run_dir, SUMMARY_FILE), None).get("status")
        if status == "diverged":
            raise NpconvError(
                f"--resume {run_dir}: the run diverged after epoch {checkpoint.epoch}, and resuming would diverge "
                "again the same way; start a new run with a lower learning rate or weight decay"
            )
        if checkpoint.epoch >= config.epochs:
            raise NpconvError(
                f"--resume {run_dir}: the run already completed {checkpoint.epoch} epochs; "
                f"pass --epochs N with N > {checkpoint.epoch} to train further"
            )

        run = _prepare(config)
        changed = [k for k in run.full_config
                   if k not in ("epochs", "npconv_version") and run.full_config[k] != saved.get(k)]
        if changed:
            raise CheckpointError(
                f"--resume {run_dir}: {', '.join(changed)} differ from when the run started "
                "(the dataset changed?); the run cannot be continued exactly"
            )
        restore(checkpoint, run.model, run.optimizer, run.rngs)
        if config.epochs != saved["epochs"]:
            write_json(config_path, {**saved, "epochs": config.epochs})
        run.full_config = {**saved, "epochs": config.epochs}
        log(f"resuming {config.model} on {config.dataset} after epoch {checkpoint.epoch} "
            f"of {config.epochs} -> {run_dir}")
        return _train(run, run_dir, checkpoint, progress=progress, log=log)


def _read_json(path, missing_message):
    """A JSON object from a run folder; ``{}`` if missing and ``missing_message`` is None."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except FileNotFoundError:
        if missing_message is None:
            return {}
        raise CheckpointError(missing_message) from None
    except (OSError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: cannot be read as JSON ({' '.join(str(e).split())})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    return obj


def _without(d, key):
    return {k: v for k, v in d.items() if k != key}


def _train(run, out_dir, checkpoint, *, progress, log):
    """Run the epochs after ``checkpoint`` (None: from the start), writing the run folder."""
    config = run.config
    history = list(checkpoint.history) if checkpoint else []
    health_rows = list(checkpoint.health) if checkpoint else []
    advice = list(checkpoint.advice) if checkpoint else []
    start_epoch = checkpoint.epoch + 1 if checkpoint else 1
    monitor = HealthMonitor(run.model, run.probe)
    path = lambda name: os.path.join(out_dir, name)  # noqa: E731

    def on_epoch_end(stats):
        rows = monitor.measure(stats.epoch)
        given = {a["key"] for a in advice}
        new_advice = [{"epoch": stats.epoch, "key": key, "message": line}
                      for key, line in advise(rows, stats.train_loss, stats.train_acc, run.num_classes) if key not in given]
        # History, health and checkpoint describe the same epoch: no signal between them.
        with deferred_interrupts():
            history.append(stats)
            health_rows.extend(rows)
            advice.extend(new_advice)
            with atomic_write(path(HISTORY_FILE), "w") as f:
                f.write(history_csv(history))
            with atomic_write(path(HEALTH_FILE), "w") as f:
                f.write(health_csv(health_rows))
            save_checkpoint(
                path(CHECKPOINT_FILE), run.model, run.optimizer, epoch=stats.epoch, config=run.full_config,
                history=history, rngs=run.rngs, health=health_rows, advice=advice,
            )
        log(format_epoch(stats, config.epochs))
        for a in new_advice:
            log(f"advice: {a['message']}")

    def lr_schedule(epoch):
        return optim.lr_at(config.lr_schedule, config.lr, epoch, config.epochs)

    try:
        # A diverging run overflows before its loss turns non-finite; fit() reports
        # that as TrainingDiverged, so NumPy's overflow warnings would only add noise.
        with np.errstate(over="ignore", invalid="ignore"):
            fit(run.model, run.loss_fn, run.optimizer, run.batches, run.x_test, run.test_labels, config.epochs,
                val=run.val, lr_schedule=lr_schedule, start_epoch=start_epoch, progress=progress,
                on_epoch_end=on_epoch_end, monitor=monitor)
    except TrainingDiverged as e:
        if history:
            kept = (f"the checkpoint of epoch {history[-1].epoch}, the last finite one, "
                    f"is kept in {path(CHECKPOINT_FILE)}")
        else:
            kept = "no epoch finished, so there is no checkpoint"
        message = f"{e}; {kept}"
        with deferred_interrupts():
            write_json(path(SUMMARY_FILE), _summary(
                "diverged", history, out_dir, advice, message=message,
                diverged_at={"epoch": e.epoch, "step": e.step},
            ))
        raise TrainingDiverged(message, epoch=e.epoch, step=e.step) from None
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        with deferred_interrupts():
            write_json(path(SUMMARY_FILE), _summary(
                "interrupted", history, out_dir, advice, signal=signal.Signals(signum).name,
            ))
        raise Interrupted(signum, out_dir=out_dir, epoch=history[-1].epoch if history else 0) from None

    summary = _summary("completed", history, out_dir, advice)
    with deferred_interrupts():
        model_config = {k: run.full_config[k] for k in ("model", "dropout", "dropout_at", "dtype", "num_classes",
                                                        "classes", "dataset", "normalize_mean", "normalize_std")}
        save_model(path(MODEL_FILE), run.model, model_config)
        write_json(path(SUMMARY_FILE), summary)
        from .plotting import plot_curves  # matplotlib takes a second to import: only when a plot is made

        plot_curves(history, path(CURVES_FILE), title=f"{config.model} on {config.dataset}")
    return summary


def _summary(status, history, out_dir, advice, **extra):
    """``summary.json``: the status, the last completed epoch's metrics, the seconds, the advice."""
    summary = {"status": status, "epochs": len(history)}
    if history:
        last = history[-1]
        summary.update(
            train_loss=last.train_loss, train_acc=last.train_acc, test_loss=last.test_loss, test_acc=last.test_acc,
            total_seconds=sum(h.seconds for h in history),
            seconds_per_epoch=sum(h.seconds for h in history) / len(history),
        )
        if last.val_loss is not None:
            summary.update(val_loss=last.val_loss, val_acc=last.val_acc)
    summary.update(extra)
    summary.update(out_dir=out_dir, advice=[a["message"] for a in advice])
    if status != "completed":
        summary["checkpoint"] = CHECKPOINT_FILE if history else None
    return summary
