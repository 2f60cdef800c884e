"""One training run as a function: a :class:`~npconv.train.settings.TrainConfig` in, a run folder out.

:func:`run_training` starts a run; :func:`resume_training` continues one from
its checkpoint. What the run folder holds, and every write into it, is
:mod:`npconv.train.runfolder`'s business. A run that diverges
(:class:`~npconv.train.loop.TrainingDiverged`) or is interrupted
(:class:`~npconv.train.interrupt.Interrupted`) records that in ``summary.json``,
keeps the checkpoint of its last completed (finite) epoch and re-raises, so a
caller such as a sweep can mark it and go on.

All randomness comes from one seed: :class:`numpy.random.SeedSequence` ``(seed)``
is split into independent streams for the initial weights, the data (subset,
validation split, per-epoch shuffling, the shifts of ``augment_shift``) and the
dropout masks, so the same seed
on the same machine gives the same ``history.csv`` bit for bit (but for the
``seconds`` column, which is a wall-clock time) -- also when the run was
interrupted and resumed at any epoch boundary.
"""

import hashlib
import os
import signal
import time
from dataclasses import asdict, dataclass

import numpy as np

from .. import __version__, data, engine, nn, optim
from ..engine import plan as engine_plan
from ..engine import planner
from .. import backend as B
from ..errors import CheckpointError, ModelFileError, NpconvError, RunFolderTaken, SettingError
from ..models import build_model, model_label
from ..models.initialization import reinitialize
from ..text import plural
from .checkpoint import restore
from .health import HealthMonitor, new_advice, probe_batch
from .interrupt import Interrupted, deferred_interrupts
from .live import LiveRecord
from .loop import TrainingDiverged, divergence_threshold, fit
from .modelfile import load_model, model_config
from .runfolder import CHECKPOINT_FILE, CONFIG_FILE, RunFolder, Summary, check_folder, model_file_of
from .settings import ARCHITECTURE, SETTINGS, TrainConfig

#: The settings a resumed run may change: how long, and where it runs -- not what it computes.
RESUMABLE = [name for name, spec in SETTINGS.items() if spec.resumable]


def seed_streams(seed):
    """Three independent generators from one seed: ``(init_rng, data_rng, dropout_rng)``.

    ``init`` draws the initial weights; ``data`` the training subset, the
    validation split, each epoch's shuffle and each batch's shifts (with
    ``augment_shift``); ``dropout`` the dropout masks.
    """
    return tuple(np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))


def default_out_dir(config, root="runs"):
    """A new folder name under ``root``: ``runs/cnn-mnist-20261127-101500`` (suffixed if taken)."""
    stem = os.path.join(root, f"{model_label(config.model)}-{config.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
    out, n = stem, 1
    while os.path.exists(out):
        n += 1
        out = f"{stem}-{n}"
    return out


def make_optimizer(config, params):
    """The optimizer ``config`` names, with its learning rate, momentum and weight decay.

    ``weight_decay_reduction = "sum"`` is weight decay written as an L2 term
    :math:`\\frac{\\lambda}{2}\\lVert W\\rVert^2` added to the loss of every example of a
    summed batch: its gradient is ``batch_size`` times :math:`\\lambda W`, so the
    optimizer decays by ``batch_size * weight_decay`` (also on an epoch's last,
    smaller batch).
    """
    weight_decay = config.weight_decay
    if config.weight_decay_reduction == "sum":
        weight_decay *= config.batch_size
    if config.optimizer == "adam":
        return optim.Adam(params, lr=config.lr, weight_decay=weight_decay)
    return optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=weight_decay)


def make_loss(config):
    """The training loss: softmax cross-entropy, reduced and computed as ``config`` says."""
    return nn.SoftmaxCrossEntropyLoss(reduction=config.loss_reduction, stable=config.stable_softmax)


def pixel_scaling(config, train_images):
    """``(mean, std)`` for :func:`npconv.data.to_float`: ``x = (pixels / 255 - mean) / std``.

    Standardized: the training set's statistics. Else None (pixels in [0, 1]),
    or ``std = 1/255`` for pixels in [0, 255] (``pixel_range = "0-255"``).
    Model files record both, so a model sees its inputs as it was trained.
    """
    if config.normalize:
        return data.pixel_stats(train_images)
    return None, (1 / 255 if config.pixel_range == "0-255" else None)


def read_initial(init_from):
    """The model a run starts from: ``(model, its file's config, the file's path)``, or :class:`SettingError`.

    ``init_from`` is a model file or a run folder (its ``model.npz``), loaded and checked like any model file.
    """
    try:
        path = model_file_of(init_from)
        model, config = load_model(path)
    except ModelFileError as e:
        raise SettingError("init_from", str(e)) from None
    return model, config, path


def _check_classes(file_config, where, num_classes, dataset):
    if file_config["num_classes"] != num_classes:
        raise SettingError("init_from", f"{where}: the model has {file_config['num_classes']} classes, the dataset "
                                        f"{dataset} {num_classes}")


def settings_with_initial(settings):
    """``settings`` (a dict, as given) completed from the model file ``init_from`` names, when no ``model`` is given.

    The run then trains the file's own architecture: its model (an imported model's recorded layers), dtype and
    dropout, unless given too. With a ``model`` given, nothing is taken: :func:`run_training` checks that it is
    the file's architecture.
    """
    if settings.get("init_from") is None or "model" in settings:
        return settings
    _, file_config, path = read_initial(settings["init_from"])
    dataset = settings.get("dataset", SETTINGS["dataset"].default)
    if settings.get("data_dir") is None and dataset in data.DATASETS:  # caught before the layers meet the classes
        _check_classes(file_config, path, len(data.DATASETS[dataset].classes), dataset)
    architecture = {name: file_config[name] for name in ARCHITECTURE if name in file_config}
    return {**architecture, "model_layers": file_config.get("model_layers"), **settings}


def start_from(model, initial, file_config, where, num_classes, dataset):
    """Copy ``initial``'s weights and buffers (from the file ``where``) into the run's new ``model``.

    The two must be one architecture: the same layers, in order, and the same parameter and buffer names,
    shapes and dtypes (:meth:`~npconv.nn.Module.load_state_dict` checks those); else :class:`SettingError`.
    """
    _check_classes(file_config, where, num_classes, dataset)
    theirs, ours = ([type(layer).__name__ for layer in m] for m in (initial, model))
    try:
        if theirs != ours:
            raise ValueError(f"layers {', '.join(theirs)} against the run's {', '.join(ours)}")
        model.load_state_dict(initial.state_dict())
    except ValueError as e:
        raise SettingError("init_from", f"{where}: its model ({file_config['model']}) is not the run's: {e}; "
                                        "without --model, --dtype and --dropout the run takes the file's") from None


def check_subset(config, n_train):
    """The number of training images ``config`` uses out of ``n_train``, or :class:`SettingError`."""
    if config.train_subset is not None and config.train_subset > n_train:
        raise SettingError("train_subset", f"must be at most the {n_train} training images, "
                                           f"got {config.train_subset}")
    return n_train if config.train_subset is None else config.train_subset


def format_epoch(stats, epochs):
    """``epoch  3/10  train loss/acc 0.0912/97.21%  test 0.0634/98.02%  6.3 s``: one epoch in one short line."""
    def pair(loss, acc):
        return f"{loss:.4f}/{100 * acc:.2f}%" if loss < 1000 else f"{loss:.3g}/{100 * acc:.2f}%"

    line = (f"epoch {stats.epoch:>{len(str(epochs))}}/{epochs}"
            f"  train loss/acc {pair(stats.train_loss, stats.train_acc)}  test {pair(stats.test_loss, stats.test_acc)}")
    if stats.val_loss is not None:
        line += f"  val {pair(stats.val_loss, stats.val_acc)}"
    return line + f"  {stats.seconds:.1f} s"


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


def _prepare(config, scaling=None):
    """Load the data and build model and optimizer, drawing from the seed's streams in a fixed order.

    A resumed run calls this too, then overwrites the state from its
    checkpoint: the subset and split come out the same because they are drawn
    the same way, before any epoch. ``scaling``: the pixels' ``(mean, std)`` when they are not the settings'
    own (a run started from a model file scales its inputs as that model was trained).
    """
    dataset = data.load_dataset(config.dataset, config.data_dir)
    n_train = check_subset(config, len(dataset.train_labels))
    if config.val_split > 0:
        n_val = round(config.val_split * n_train)
        if not 1 <= n_val < n_train:
            raise SettingError(
                "val_split", f"{config.val_split} of {n_train} training images gives {n_val} validation images; "
                             f"it must leave at least one image for validation and one for training")
    fitted = n_train - (round(config.val_split * n_train) if config.val_split > 0 else 0)
    if config.batch_size > fitted:  # caught before anything is written: every epoch would be one step
        raise SettingError("batch_size", f"{config.batch_size} is more than the {fitted} images trained on, so every "
                                         f"epoch would be a single step; choose at most {fitted}")

    init_rng, data_rng, dropout_rng = seed_streams(config.seed)
    dtype = np.dtype(config.dtype)

    mean, std = pixel_scaling(config, dataset.train_images) if scaling is None else scaling
    train_images, train_labels = dataset.train_images, dataset.train_labels
    if config.train_subset is not None:
        train_images, train_labels = data.random_subset(train_images, train_labels, config.train_subset, data_rng)
    val = None
    if config.val_split > 0:
        train_images, train_labels, val_images, val_labels = data.train_val_split(
            train_images, train_labels, config.val_split, data_rng
        )
        val = (B.to_device(data.to_float(val_images, mean, std, dtype)), B.to_device(val_labels))
    # The data goes to the device once (a no-op on the CPU); the batches are gathered there.
    x_train = B.to_device(data.to_float(train_images, mean, std, dtype))
    x_test = B.to_device(data.to_float(dataset.test_images, mean, std, dtype))
    train_labels_on_device, test_labels = B.to_device(train_labels), B.to_device(dataset.test_labels)
    augment = None
    if config.augment_shift:  # shifted images are filled with the background: a black pixel, standardized
        background = data.to_float(np.zeros((1, 1, 1), np.uint8), mean, std, dtype).item()
        augment = lambda xb, rng: data.random_shift(xb, config.augment_shift, background, rng)  # noqa: E731
    batches = data.DataLoader(x_train, train_labels_on_device, config.batch_size, shuffle=True, rng=data_rng,
                              augment=augment)

    num_classes = len(dataset.classes)
    model = build_model(
        config.model, config.dropout, config.dropout_at, layers=config.model_layers, num_classes=num_classes,
        rng=init_rng, dtype=dtype,
    )
    if config.init_std is not None or not config.zero_classifier:  # another initialization than npconv's own
        reinitialize(model, init_rng, std=config.init_std, zero_output=config.zero_classifier)
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
        optimizer=make_optimizer(config, model.parameters()), loss_fn=make_loss(config),
        batches=batches, x_test=x_test, test_labels=test_labels, val=val, probe=probe_batch(x_train),
        rngs={"data": data_rng, "dropout": dropout_rng}, num_classes=num_classes,
    )


def run_training(config, out_dir=None, *, progress=True, log=print):
    """Train as ``config`` says and write the run folder; returns its :class:`~npconv.train.runfolder.Summary`.

    Everything the user can get wrong is checked before anything is written.
    ``out_dir`` (default: a new folder under ``runs/``) must not hold a run
    already (continue one with :func:`resume_training`); it is locked while training.

    Raises
    ------
    NpconvError
        A bad setting (:class:`~npconv.errors.SettingError` naming it), missing
        or malformed data, an unusable or busy ``out_dir``.
    TrainingDiverged
        After recording ``status: diverged`` in ``summary.json``.
    Interrupted
        (a ``KeyboardInterrupt``) after recording ``status: interrupted``.
    """
    config.validate()
    folder = RunFolder(default_out_dir(config) if out_dir is None else out_dir)
    check_folder(folder.path, "out_dir")
    with B.on_device(config.device):  # a device that cannot be used is an error before anything is written
        initial = read_initial(config.init_from) if config.init_from is not None else None
        run = _prepare(config, None if initial is None else _scaling(initial[1]))
        if initial is not None:
            start_from(run.model, *initial, run.num_classes, config.dataset)
            with open(initial[2], "rb") as f:  # which weights exactly, whatever becomes of the file
                run.full_config["init_from_sha256"] = hashlib.file_digest(f, "sha256").hexdigest()
        plan = choose_plan(config, run.model, run.x_test.shape[1:])
        folder.create()
        with folder.lock():
            taken = folder.holds_run()
            if taken:
                raise RunFolderTaken(folder.path, taken)
            folder.write_config(run.full_config)
            if plan is not None:
                folder.write_plan(engine_plan.record(plan))
            log(f"training {config.model} on {config.dataset} ({len(run.batches.y)} images) "
                f"for {plural(config.epochs, 'epoch')}{_where(config)} -> {folder.path}")
            return _train(run, folder, None, plan, progress=progress, log=log)


def resume_training(run_dir, *, epochs=None, settings=None, progress=True, log=print):
    """Continue the run in ``run_dir`` from its checkpoint; returns its :class:`~npconv.train.runfolder.Summary`.

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
    folder = RunFolder(run_dir)
    if not os.path.isdir(folder.path):
        problem = "not a directory" if os.path.exists(folder.path) else "no such directory"
        raise SettingError("run_dir", f"{folder.path}: {problem}")
    if not os.path.exists(folder.file(CONFIG_FILE)):  # checked before locking: nothing is written into such a folder
        raise SettingError("run_dir", f"{folder.path}: no {CONFIG_FILE}; not an npconv run folder")
    with folder.lock():
        saved = folder.read_config(CheckpointError)
        config = TrainConfig.from_dict(saved, folder.file(CONFIG_FILE))
        for name, value in (settings or {}).items():
            if not SETTINGS[name].resumable and getattr(config, name) != value:
                raise SettingError(name, f"{value} conflicts with the run's {getattr(config, name)!r} "
                                         f"({folder.file(CONFIG_FILE)}); a resumed run keeps its own settings "
                                         f"(only {' and '.join(RESUMABLE)} may change)")
        changes = {**(settings or {}), **({"epochs": epochs} if epochs is not None else {})}
        for name in RESUMABLE:  # more epochs, another device (see the README on devices)
            if changes.get(name) is not None:
                setattr(config, name, changes[name])
        config.validate()
        if not os.path.exists(folder.file(CHECKPOINT_FILE)):
            raise SettingError("run_dir", f"{folder.path}: no {CHECKPOINT_FILE} to resume from (the run stopped "
                                          "before it finished its first epoch); start it again instead")
        checkpoint = folder.read_checkpoint()
        if _without(checkpoint.config, RESUMABLE) != _without(saved, RESUMABLE):
            raise CheckpointError(f"{checkpoint.path}: belongs to another run than {folder.file(CONFIG_FILE)}")
        summary = _summary_if_readable(folder)
        if summary is not None and summary.status == "diverged":
            raise SettingError("run_dir", f"{folder.path}: the run diverged after epoch {checkpoint.epoch}, and "
                                          "resuming would diverge again the same way; start a new run with a lower "
                                          "learning rate or weight decay")
        if checkpoint.epoch >= config.epochs and changes.get("epochs") is None:  # nothing asked: nothing to do
            raise SettingError("run_dir", f"{folder.path}: the run already completed its {checkpoint.epoch} epochs; "
                                          f"to train it further, ask for more epochs (--epochs {checkpoint.epoch + 5})")
        if checkpoint.epoch >= config.epochs:
            raise SettingError("epochs", f"must be more than the {checkpoint.epoch} epochs the run in {folder.path} "
                                         f"already completed, got {config.epochs}")

        with B.on_device(config.device):
            return _resume(folder, config, saved, checkpoint, progress, log)


def _resume(folder, config, saved, checkpoint, progress, log):
    """The end of :func:`resume_training`, on the run's device: rebuild, check, restore, train."""
    # A run started from a model file scaled its inputs as that model did: as recorded, the file is not read again.
    run = _prepare(config, _scaling(saved) if config.init_from is not None else None)
    recorded = {**asdict(config), **saved}  # a setting added since the run started: at its default
    changed = [k for k in run.full_config
               if k not in (*RESUMABLE, "npconv_version") and run.full_config[k] != recorded.get(k)]
    if changed:
        raise CheckpointError(
            f"{folder.path}: {', '.join(changed)} differ from when the run started "
            "(the dataset changed?); the run cannot be continued exactly"
        )
    restore(checkpoint, run.model, run.optimizer, run.rngs)
    run.full_config = {**saved, **{name: getattr(config, name) for name in RESUMABLE}}
    if run.full_config != saved:
        folder.write_config(run.full_config)
    # The plan the run started with, whatever the cache holds now: it decides the order of sums. A run of
    # npconv 0.2 recorded none and computed with the built-in one.
    recorded_plan = folder.plan_file()
    plan = None if config.engine != "fast" else (
        engine_plan.Plan.load(recorded_plan, origin="recorded") if recorded_plan else engine_plan.BUILT_IN)
    log(f"resuming {config.model} on {config.dataset} after epoch {checkpoint.epoch} "
        f"of {config.epochs}{_where(config)} -> {folder.path}")
    return _train(run, folder, checkpoint, plan, progress=progress, log=log)


def choose_plan(config, model, input_shape):
    """The fast engine's plan for a new run (:mod:`npconv.engine.plan`), or None for the reference engine.

    ``measure``: the plan measured on this machine for this model and batch size (measured now, in a
    second or two, if the cache has none); ``built-in``: npconv 0.2's constants; a ``.json`` path: that
    plan, pinned. On a GPU the blocks and chunks are not used: the built-in plan is recorded.
    """
    if config.engine != "fast":
        return None
    if config.plan == "built-in" or config.device != "cpu":
        return engine_plan.BUILT_IN
    if config.plan == "measure":
        return planner.plan_for(model, input_shape, config.batch_size)
    try:
        return engine_plan.Plan.load(config.plan)
    except engine_plan.PlanError as e:
        raise SettingError("plan", str(e)) from None


def _scaling(config):
    """The ``(mean, std)`` a model file or ``config.json`` records."""
    return config.get("normalize_mean"), config.get("normalize_std")


def _where(config):
    """`` on cuda`` in a progress line, for a run that is not on the CPU."""
    return "" if config.device == "cpu" else f" on {config.device}"


def _summary_if_readable(folder):
    try:
        return folder.read_summary()
    except NpconvError:
        return None


def _without(d, keys):
    return {k: v for k, v in d.items() if k not in keys}


def _train(run, folder, checkpoint, plan, *, progress, log):
    """Run the epochs after ``checkpoint`` (None: from the start), writing the run folder."""
    config = run.config
    history = list(checkpoint.history) if checkpoint else []
    health_rows = list(checkpoint.health) if checkpoint else []
    advice = list(checkpoint.advice) if checkpoint else []
    start_epoch = checkpoint.epoch + 1 if checkpoint else 1
    monitor = HealthMonitor(run.model, run.probe)
    title = f"{config.model} on {config.dataset}"
    if checkpoint:  # the steps of the epoch the run repeats now are drawn again
        folder.keep_losses(checkpoint.epoch)
    live = LiveRecord(folder, run.model, run.x_test[:1], len(run.batches), start_epoch)

    def on_epoch_end(stats):
        rows = monitor.measure(stats.epoch)
        added = new_advice(advice, rows, stats, run.num_classes)
        history.append(stats)
        health_rows.extend(rows)
        advice.extend(added)
        folder.write_epoch(history, health_rows, run.model, run.optimizer, config=run.full_config, rngs=run.rngs,
                           advice=advice)
        live.epoch_end(stats.epoch)
        log(format_epoch(stats, config.epochs))
        for a in added:
            log(f"advice: {a['message']}")

    def lr_schedule(epoch):
        return optim.lr_at(config.lr_schedule, config.lr, epoch, config.epochs)

    def end(status, **extra):
        summary = Summary.of(status, history, folder.path, [a["message"] for a in advice], **extra)
        folder.write_summary(summary)
        return summary

    try:
        # A diverging run overflows before its loss turns non-finite; fit() reports
        # that as TrainingDiverged, so NumPy's overflow warnings would only add noise.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            fit(engine.compile(run.model, config.engine, plan), run.loss_fn, run.optimizer, run.batches, run.x_test,
                run.test_labels, config.epochs, val=run.val, lr_schedule=lr_schedule, start_epoch=start_epoch,
                progress=progress, on_epoch_end=on_epoch_end, monitor=monitor, on_step=live.step,
                divergence_threshold=divergence_threshold(run.num_classes))
    except TrainingDiverged as e:
        # One line: where, the likely cause, what is kept (summary.json records the details).
        kept = f"kept epoch {history[-1].epoch}" if history else "no checkpoint"
        message = f"{e}: lr or weight decay too high; {kept}"
        with deferred_interrupts():
            end("diverged", message=message, diverged_at={"epoch": e.epoch, "step": e.step})
            folder.write_curves(history, f"{title} (diverged)")
        raise TrainingDiverged(message, epoch=e.epoch, step=e.step) from None
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        end("interrupted", signal=signal.Signals(signum).name)
        raise Interrupted(signum, out_dir=folder.path, epoch=history[-1].epoch if history else 0) from None
    finally:
        live.close()

    with deferred_interrupts():  # the model, the summary and the curves: all three, then the signal
        folder.write_model(run.model, model_config(run.full_config))
        summary = end("completed")
        folder.write_curves(history, title)
    return summary
