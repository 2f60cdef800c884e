"""Checkpoints: everything needed to continue a run exactly where it stopped.

A run writes ``checkpoint.npz`` into its folder at the end of every epoch
(atomically, so a crash leaves the previous complete checkpoint). It holds the
state at that epoch boundary:

======================  ======================================================
``model.<name>``        every parameter and buffer (``model.0.weight``,
                        ``model.1.running_mean``, ``model.1.num_batches_tracked``, ...)
``optimizer.<key>``     the optimizer's state (``optimizer.step_count``,
                        ``optimizer.momentum.0``, ``optimizer.exp_avg.0``, ...)
``__checkpoint__``      a 0-d unicode array holding JSON: ``format``, ``epoch``
                        (epochs completed), the run's ``config``, the
                        ``history`` rows so far, the ``health`` rows and the
                        ``advice`` given so far, and ``rng``: the state of each
                        random generator still in use (``rng.bit_generator.state``)
======================  ======================================================

Restoring all of it -- weights, batch normalization's running statistics,
optimizer buffers and step count, the data and dropout generators -- and continuing at ``epoch + 1`` repeats exactly the
computations an uninterrupted run makes, so the result is bit-identical.

Checkpoints are files like model files: loaded with the same untrusting reader
(:func:`npconv.io.npz.read_npz`, no pickles, every header checked before
allocation), and every field is validated. Any problem raises
:class:`~npconv.errors.CheckpointError` naming the file.
"""

from dataclasses import asdict, dataclass, fields

import numpy as np

from .. import __version__
from .. import backend as B
from ..errors import CheckpointError, is_int, is_number
from ..io.npz import json_entry, one_line, parse_json_entry, read_npz, write_npz
from .health import HEALTH_COLUMNS
from .loop import EpochStats

FORMAT = "npconv-checkpoint-1"
META_KEY = "__checkpoint__"
_MODEL_PREFIX = "model."
_OPTIMIZER_PREFIX = "optimizer."


@dataclass
class Checkpoint:
    """A loaded, validated checkpoint (see the module docstring for the fields)."""

    path: str
    epoch: int
    config: dict
    history: list          # EpochStats, one per completed epoch
    health: list           # dicts keyed by npconv.train.health.HEALTH_COLUMNS
    advice: list           # {"epoch", "key", "message"} of each advice given (once per kind per run)
    rng: dict              # name -> bit_generator.state dict
    model_state: dict      # name -> array
    optimizer_state: dict  # key -> array


def save_checkpoint(path, model, optimizer, *, epoch, config, history, rngs, health=(), advice=()):
    """Write a checkpoint of the state after ``epoch`` completed epochs, atomically.

    Parameters
    ----------
    path : str or os.PathLike
    model : Module
    optimizer : Optimizer
    epoch : int
        Epochs completed (>= 1).
    config : dict
        The run's settings (JSON-able).
    history : list of EpochStats
        One per completed epoch.
    rngs : dict[str, numpy.random.Generator]
        Every generator the rest of the run draws from, by name.
    health : list of dict
        ``health.csv`` rows so far.
    advice : iterable of dict
        ``{"epoch": int, "key": str, "message": str}`` of each advice given so far.
    """
    arrays = {_MODEL_PREFIX + k: B.to_numpy(v) for k, v in model.state_dict().items()}
    arrays.update({_OPTIMIZER_PREFIX + k: B.to_numpy(v) for k, v in optimizer.state_dict().items()})
    arrays[META_KEY] = json_entry({
        "format": FORMAT,
        "npconv_version": __version__,
        "epoch": epoch,
        "config": config,
        "history": [asdict(h) for h in history],
        "health": list(health),
        "advice": list(advice),
        "rng": {name: rng.bit_generator.state for name, rng in rngs.items()},
    })
    write_npz(path, arrays)


def load_checkpoint(path):
    """Read and validate a checkpoint file; returns a :class:`Checkpoint`.

    The arrays are checked for structure here and against the model and
    optimizer in :func:`restore`.
    """
    path = str(path)
    arrays = read_npz(path, "checkpoint", CheckpointError)
    if META_KEY not in arrays:
        raise CheckpointError(f"{path}: not an npconv checkpoint (no {META_KEY} entry)")
    meta = parse_json_entry(arrays.pop(META_KEY), f"{path}: its {META_KEY} entry", CheckpointError)

    def bad(what):
        raise CheckpointError(f"{path}: {what}")

    if meta.get("format") != FORMAT:
        bad(f"unknown checkpoint format {meta.get('format')!r} (expected {FORMAT})")
    epoch = meta.get("epoch")
    if not is_int(epoch) or epoch < 1:
        bad(f"'epoch' must be an integer >= 1, got {epoch!r}")
    config = meta.get("config")
    if not isinstance(config, dict):
        bad("'config' is not a JSON object")
    rng = meta.get("rng")
    if not isinstance(rng, dict) or not all(isinstance(s, dict) for s in rng.values()):
        bad("'rng' must map generator names to states")
    advice = meta.get("advice", [])
    if not isinstance(advice, list) or not all(
        isinstance(a, dict) and set(a) == {"epoch", "key", "message"} and is_int(a["epoch"])
        and isinstance(a["key"], str) and isinstance(a["message"], str) for a in advice
    ):
        bad("'advice' must be a list of {epoch, key, message} objects")
    history = _check_history(meta.get("history"), epoch, bad)
    health = _check_health(meta.get("health", []), bad)

    model_state, optimizer_state = {}, {}
    for key, array in arrays.items():
        if key.startswith(_MODEL_PREFIX):
            # Weights and running statistics are finite floats; a count (num_batches_tracked) is an integer.
            # Names, shapes and exact dtypes are checked against the run's model in restore().
            if array.dtype.kind not in "fiu" or (array.dtype.kind == "f" and not np.isfinite(array).all()):
                bad(f"array {key!r} is not finite floating-point weights or an integer count")
            model_state[key[len(_MODEL_PREFIX):]] = array
        elif key.startswith(_OPTIMIZER_PREFIX):
            optimizer_state[key[len(_OPTIMIZER_PREFIX):]] = array
        else:
            bad(f"unexpected array {key!r}")
    return Checkpoint(path, epoch, config, history, health, advice, rng, model_state, optimizer_state)


def restore(checkpoint, model, optimizer, rngs):
    """Load a checkpoint's state into a freshly built ``model``, ``optimizer`` and ``rngs``.

    ``model`` and ``optimizer`` must be built exactly as for the original run;
    every name, shape and dtype must match. ``rngs`` maps the same names as at
    saving to generators of the same kind, whose state is replaced.
    """
    path = checkpoint.path
    try:
        model.load_state_dict(checkpoint.model_state)
    except ValueError as e:
        raise CheckpointError(f"{path}: the weights do not fit the run's model: {one_line(e)}") from None

    expected = optimizer.state_dict()
    state = checkpoint.optimizer_state
    if set(state) != set(expected):
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise CheckpointError(
            f"{path}: the optimizer state does not fit the run's optimizer: missing {missing}, unexpected {unexpected}"
        )
    for key, array in state.items():
        want = expected[key]  # shape and dtype only: no copy from a device
        if key == "step_count":
            if array.shape != () or array.dtype.kind not in "iu" or int(array) < 0:
                raise CheckpointError(f"{path}: optimizer step_count must be an integer >= 0")
        elif array.shape != want.shape or array.dtype != want.dtype or not np.isfinite(array).all():
            raise CheckpointError(
                f"{path}: optimizer state {key!r} is {array.dtype} {array.shape}, "
                f"expected finite {want.dtype} {want.shape}"
            )
    optimizer.load_state_dict({k: B.xp.asarray(v) for k, v in state.items()})

    for name, rng in rngs.items():
        saved = checkpoint.rng.get(name)
        kind = type(rng.bit_generator).__name__
        if saved is None or saved.get("bit_generator") != kind:
            raise CheckpointError(f"{path}: no {kind} state for the {name!r} random generator")
        try:
            rng.bit_generator.state = saved
        except (ValueError, TypeError, KeyError, OverflowError) as e:
            raise CheckpointError(f"{path}: invalid state of the {name!r} random generator ({one_line(e)})") from None




def _check_history(rows, epoch, bad):
    """The history rows as EpochStats: exactly ``epoch`` rows, epochs 1..epoch, finite figures."""
    if not isinstance(rows, list) or len(rows) != epoch:
        bad(f"'history' must list the {epoch} completed epochs")
    names = [f.name for f in fields(EpochStats)]
    history = []
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or set(row) != set(names):
            bad(f"history row {i} must have exactly the fields {', '.join(names)}")
        if row["epoch"] != i or not is_int(row["epoch"]):
            bad(f"history row {i} is for epoch {row['epoch']!r}")
        for name in names[1:]:
            value = row[name]
            optional = name.startswith("val_")
            if not (is_number(value) or (optional and value is None)):
                bad(f"history row {i}: {name} must be a finite number, got {value!r}")
        history.append(EpochStats(**{name: row[name] for name in names}))
    if len({h.val_loss is None for h in history}) > 1:
        bad("history rows disagree on whether there is a validation set")
    return history


def _check_health(rows, bad):
    if not isinstance(rows, list):
        bad("'health' must be a list of rows")
    for row in rows:
        if not isinstance(row, dict) or set(row) != set(HEALTH_COLUMNS):
            bad(f"health rows must have exactly the fields {', '.join(HEALTH_COLUMNS)}")
        for key, value in row.items():
            # Figures may be inf or NaN (a gradient can overflow while the loss stays finite).
            if not (value is None or isinstance(value, (str, int, float))) or isinstance(value, bool):
                bad(f"health row field {key!r} holds {value!r}")
    return rows
