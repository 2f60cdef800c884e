"""Every setting of a training run, declared once.

:class:`TrainConfig` is the one table of settings. Each field says, in one
place, its type, its default, the values it accepts, a line of help, and two
facts about it: whether it is part of the model's *architecture* (recorded in
model files and checked when one is loaded) and whether it changes the *cost*
of a training step (the sweep's time estimate times each distinct such setting).

Everything else is derived from this table, never written again:

* :meth:`TrainConfig.validate` -- each value checked against its field;
* ``npconv train``'s options and ``npconv sweep``'s grid options
  (:mod:`npconv.cli.options`) -- one option per field, its help and default;
* a study file's ``[baseline]`` and ``set`` tables and ``vary`` key
  (:func:`make_config`) -- the field names;
* ``--resume``'s check that no setting changes, and the types of a
  ``config.json`` read back (:meth:`TrainConfig.from_dict`);
* a model file's architecture check (:data:`ARCHITECTURE`);
* a sweep's run keys (:meth:`TrainConfig.canonical`).

Adding a setting is one field here plus the code that uses it.

``model`` accepts a preset's name or the path of an architecture file (a ``.toml``
file that lists layers, :mod:`npconv.models.spec`). A :class:`TrainConfig`
reads such a file when it is made, once, and keeps its layers, checked and
normalized, in its one field that is not a setting, ``model_layers``: that is what the
run folder records and builds its model from, so a run (resumed, evaluated,
trained by a sweep worker on another machine) never reads the file again, and
a run's key changes when the file's architecture does.

Some presets train best with their own recipe: :data:`MODEL_DEFAULTS` holds
their measured defaults, which :func:`make_config` uses for the settings not
given (``npconv train --model cnn-bn`` trains with them).

Errors name a setting as the library calls it (``lr must be a finite number >
0, got -1.0``); the command line says the same with its flag (``--lr must be
...``), see :class:`~npconv.errors.SettingError`.
"""

import math
import os
import types
from dataclasses import dataclass, field, fields

from .. import data, optim
from ..backend import DEVICES
from ..engine import ENGINES
from ..errors import CheckpointError, SettingError
from ..models import DROPOUT_LOCATIONS, MODELS, ModelSpecError, dropout_fits, is_architecture_file, model_layers
from ..nn.loss import REDUCTIONS

#: The plans a run can ask for besides a pinned plan file (npconv/engine/plan.py).
PLANS = ("measure", "built-in")

DTYPES = ("float32", "float64")
#: Largest shift of ``augment_shift``, in pixels: beyond it an MNIST digit leaves its 28x28 frame.
MAX_SHIFT = 4
PIXEL_RANGES = ("0-1", "0-255")


@dataclass(frozen=True)
class Setting:
    """What one setting accepts, derived from its :class:`TrainConfig` field.

    Attributes
    ----------
    name : str -- the field name (``batch_size``); its command-line flag is ``--batch-size``
    kind : type -- ``bool``, ``int``, ``float`` or ``str``
    default : the value ``npconv train`` uses when the setting is not given
    help : str -- one line for ``--help``
    optional : bool -- ``None`` is accepted (the setting is off)
    choices : tuple or None -- the accepted values of a ``str`` setting
    low, high, low_open, high_open -- the accepted range of a number
    directory : bool -- the value is a path that must be an existing folder
    file_suffix : str or None -- a value that is not one of the ``choices`` may be the path of a file
        ending in this suffix (``model``: a ``.toml`` architecture file); the file itself is read by
        :meth:`TrainConfig.validate`
    architecture : bool -- part of the model; recorded in model files
    cost : bool -- changes the time of a training step
    resumable : bool -- may take another value when a run is resumed (where it runs, not what it computes:
        ``epochs`` and ``device``)
    keyed_at_default : bool -- part of a run's key even at its default. False for the settings added
        after sweeps first keyed their runs: at their default they leave the key as it was, so that
        runs trained before the setting existed are still found and reused.
    metavar : str -- the value's placeholder in ``--help``
    """

    name: str
    kind: type
    default: object
    help: str
    optional: bool = False
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    directory: bool = False
    file_suffix: str | None = None
    architecture: bool = False
    cost: bool = False
    keyed_at_default: bool = True
    resumable: bool = False
    metavar: str | None = None

    @property
    def flag(self):
        return "--" + self.name.replace("_", "-")

    def accepted(self):
        """What the setting accepts, as the end of "must be ...": ``an integer >= 1``, ``in [0, 1)``."""
        if self.choices is not None:
            files = f", or a {self.file_suffix} file" if self.file_suffix else ""
            return "one of " + ", ".join(map(str, self.choices)) + files
        if self.kind is bool:
            return "true or false"
        if self.kind is int:
            return f"an integer >= {self.low}" if self.high is None else f"an integer in [{self.low}, {self.high}]"
        if self.kind is float:
            if self.high is not None:
                return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
            return f"a finite number {'>' if self.low_open else '>='} {self.low:g}"
        return "a path" if self.directory else "a string"

    def has_type(self, value):
        """Whether ``value`` has this setting's type (an int is a fine float; a bool is only a bool)."""
        if value is None:
            return self.optional
        if isinstance(value, bool) or self.kind is bool:
            return isinstance(value, bool) and self.kind is bool
        if self.kind is float:
            return isinstance(value, (int, float))
        return isinstance(value, self.kind)

    def check(self, value):
        """Raise :class:`SettingError` unless ``value`` is accepted."""
        if value is None and self.optional:
            return
        if not self.has_type(value) or not self._in_range(value):
            raise SettingError(self.name, f"must be {self.accepted()}, got {value!r}")
        if self.directory and not os.path.isdir(value):
            problem = "not a directory" if os.path.exists(value) else "no such directory"
            raise SettingError(self.name, f"{value}: {problem}")

    def is_choice(self, value):
        """Whether ``value`` is one of the choices, or a file name with the accepted suffix."""
        if self.file_suffix and isinstance(value, str) and value.lower().endswith(self.file_suffix):
            return True
        return value in self.choices

    def _in_range(self, value):
        if self.choices is not None:
            return self.is_choice(value)
        if self.kind not in (int, float):
            return True
        if not math.isfinite(value):
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def coerce(self, value):
        """The value as this setting's type (``1`` -> ``1.0`` for a float), so equal settings compare equal."""
        return value if value is None or self.kind is not float else float(value)

    def parse(self, text):
        """A value from text (a command-line list item); :class:`SettingError` if it is not of the type."""
        text = text.strip()
        if self.optional and text.lower() == "none":
            return None
        if self.kind is bool:
            if text.lower() not in ("true", "false"):
                raise SettingError(self.name, f": {text!r} is not true or false")
            return text.lower() == "true"
        if self.kind in (int, float):
            try:
                return self.kind(text)
            except ValueError:
                noun = "an integer" if self.kind is int else "a number"
                raise SettingError(self.name, f": {text!r} is not {noun}") from None
        return text


def setting(default, help, **spec):
    """A :class:`TrainConfig` field: its default, its help line and what it accepts (see :class:`Setting`)."""
    return field(default=default, metadata={"help": help, **spec})


@dataclass
class TrainConfig:
    """Every setting of a training run; the defaults are ``npconv train``'s.

    The defaults reach >= 99.0 % test accuracy on MNIST with ``cnn`` and
    >= 97.8 % with ``mlp`` in 10 epochs (figures in the README).
    """

    model: str = setting("cnn", "the network: a preset, or an architecture file (.toml) that lists its layers",
                         choices=MODELS, file_suffix=".toml", architecture=True, cost=True)
    dataset: str = setting("mnist", "built-in dataset", choices=tuple(sorted(data.DATASETS)), cost=True)
    data_dir: str | None = setting(
        None, "folder with the four IDX files (train-images-idx3-ubyte[.gz], ...) instead of a built-in dataset",
        directory=True, cost=True, metavar="DIR")
    epochs: int = setting(10, "passes over the training set", low=1, resumable=True, metavar="N")
    batch_size: int = setting(100, "images per training step", low=1, cost=True, metavar="N")
    optimizer: str = setting("sgd", "sgd (with momentum) or adam", choices=optim.OPTIMIZERS, cost=True)
    lr: float = setting(0.05, "learning rate", low=0, low_open=True, metavar="X")
    lr_schedule: str = setting("cosine", "learning rate per epoch: constant, or cosine annealing towards 0",
                               choices=optim.SCHEDULES)
    momentum: float = setting(0.9, "SGD momentum (ignored by adam)", low=0, high=1, high_open=True, metavar="X")
    weight_decay: float = setting(5e-4, "L2 weight decay", low=0, metavar="X")
    dropout: float = setting(0.0, "dropout probability", low=0, high=1, high_open=True, architecture=True,
                             cost=True, metavar="P")
    dropout_at: str = setting("before-fc", "where dropout goes", choices=DROPOUT_LOCATIONS, architecture=True,
                              cost=True)
    seed: int = setting(0, "seed of the initial weights, the shuffling and the dropout masks", low=0, metavar="N")
    train_subset: int | None = setting(None, "train on N random training images", low=1,
                                       metavar="N")
    val_split: float = setting(0.0, "hold out this fraction of the training images for validation", low=0, high=1,
                               high_open=True, metavar="F")
    normalize: bool = setting(True, "standardize pixels with the training set's mean and std (else [0, 1] only)")
    dtype: str = setting("float32", "floating-point type of weights and activations", choices=DTYPES,
                         architecture=True, cost=True)
    augment_shift: int = setting(0, "data augmentation: shift each training image by up to N pixels in each "
                                    "direction, drawn anew every epoch (0: off)", low=0, high=MAX_SHIFT,
                                 keyed_at_default=False, metavar="N")
    device: str = setting("cpu", "where the arrays live: cpu (NumPy) or cuda (CuPy on an NVIDIA GPU; "
                                 'pip install "npconv[cuda]")', choices=tuple(DEVICES), cost=True,
                          keyed_at_default=False, resumable=True)
    engine: str = setting("fast", "what computes the network: fast (npconv.engine: its kernels, chunks and "
                                  "threads) or reference (the textbook layers of npconv.nn alone)",
                          choices=ENGINES, cost=True, keyed_at_default=False)
    plan: str = setting("measure", "the fast engine's block sizes and chunks: measure (timed on this machine once "
                                   "per model and batch size, then remembered in ~/.cache/npconv/plans), built-in "
                                   "(npconv 0.2's constants), or a plan .json file (pinned: the same numbers on one "
                                   "machine); recorded in the run folder's plan.json, which --resume reuses",
                        choices=PLANS, file_suffix=".json", cost=True, keyed_at_default=False, metavar="PLAN")
    init_from: str | None = setting(
        None, "start from the weights and buffers of this model file (or run folder's model.npz) instead of fresh "
              "ones; without --model, the run takes the file's architecture (and its input scaling always)",
        keyed_at_default=False, metavar="MODEL.npz|RUN_DIR")
    # Implementation choices other from-scratch codes make (npconv/studies/collapse.toml sweeps them to find
    # which one makes the course study's runs collapse). The defaults are npconv's own choices; at their
    # defaults they stay out of run keys, so runs made before they existed keep their keys.
    init_std: float | None = setting(
        None, "standard deviation of Gaussian initial weights (default: He-uniform, sized by each layer's fan-in)",
        low=0, low_open=True, keyed_at_default=False, metavar="X")
    zero_classifier: bool = setting(True, "start the output layer at zero (else it is initialized like the others)",
                                    keyed_at_default=False)
    pixel_range: str = setting("0-1", "pixel scale before standardization (0-255 only with normalize off)",
                               choices=PIXEL_RANGES, keyed_at_default=False)
    loss_reduction: str = setting("mean", "the loss of a batch: the mean or the sum of its examples' losses",
                                  choices=REDUCTIONS, keyed_at_default=False)
    weight_decay_reduction: str = setting(
        "mean", "weight decay as an L2 term in the loss counted once per batch (mean) or once per example (sum)",
        choices=REDUCTIONS, keyed_at_default=False)
    stable_softmax: bool = setting(True, "subtract each row's maximum before exp in the loss's softmax (else exp "
                                         "can overflow)", keyed_at_default=False)

    #: Not a setting: the layers of an architecture file, read when the config is made; None for a preset.
    model_layers: list | None = field(default=None, metadata={"derived": True})

    def __post_init__(self):
        """An architecture file is read here, once: its layers, checked and normalized, go into ``model_layers``.

        So every config of an architecture file carries its architecture. A config
        that already has them (read back from a run folder, or sent to a sweep
        worker) does not read the file again.
        """
        if is_architecture_file(self.model) and self.model_layers is None:
            classes = data.DATASETS[self.dataset].classes if self.dataset in data.DATASETS else None
            try:
                self.model_layers = model_layers(self.model, None, None if classes is None else len(classes))
            except ModelSpecError as e:
                raise SettingError("model", str(e)) from None

    def validate(self):
        """Raise :class:`~npconv.errors.SettingError` naming the first setting out of its range."""
        for spec in SETTINGS.values():
            spec.check(getattr(self, spec.name))
        if not is_architecture_file(self.model):
            if self.model_layers is not None:
                raise SettingError("model", f"{self.model} is a preset: model_layers are for an architecture file only")
        else:  # the layers it records, checked again (they may come from a file on disk), never read anew
            try:
                self.model_layers = model_layers(self.model, self.model_layers,
                                                 len(data.DATASETS[self.dataset].classes))
            except ModelSpecError as e:
                raise SettingError("model", f"{self.model}: {e}") from None
        if self.dropout > 0 and not dropout_fits(self.model, self.dropout_at, self.model_layers):
            if self.model == "mlp":
                raise SettingError("dropout_at", f"must be before-fc for the mlp model (it has no conv or pool "
                                                 f"layers), got {self.dropout_at!r}")
            raise SettingError("dropout_at", f"{self.dropout_at}: the model {self.model} has no layer of that kind")
        if self.pixel_range != "0-1" and self.normalize:
            raise SettingError("pixel_range", f"{self.pixel_range} needs normalize off: standardizing the pixels "
                                              "removes their scale")

    def canonical(self):
        """The settings as a dict, every value of its field's type (``lr = 1`` is ``1.0``): what run keys hash.

        A setting added after run keys were first made is left out while it
        has its default value (see :attr:`Setting.keyed_at_default`).
        """
        values = {name: spec.coerce(getattr(self, name)) for name, spec in SETTINGS.items()}
        keyed = {name: value for name, value in values.items()
                 if SETTINGS[name].keyed_at_default or value != SETTINGS[name].default}
        if self.model_layers is not None:  # an architecture file: its architecture, not only its path
            keyed["model_layers"] = self.model_layers
        return keyed

    @classmethod
    def from_dict(cls, settings, where):
        """The config saved in a run folder's ``config.json`` (types checked here, ranges by :meth:`validate`).

        ``where`` names the file in messages. Extra keys (the dataset's digest,
        the normalization, ...) are ignored. A setting added after the run was
        made (not ``keyed_at_default``) takes its default: the run was made
        without it.
        """
        kwargs = {}
        for name, spec in SETTINGS.items():
            if name not in settings and not spec.keyed_at_default:
                continue  # a setting added later: a run made before it existed had its default
            if name not in settings:
                raise CheckpointError(f"{where}: the setting {name!r} is missing")
            if not spec.has_type(settings[name]):
                raise CheckpointError(f"{where}: the setting {name!r} has the wrong type ({settings[name]!r})")
            kwargs[name] = settings[name]
        layers = settings.get("model_layers")
        if not (layers is None or isinstance(layers, list)):
            raise CheckpointError(f"{where}: 'model_layers' must be a list of layers, got {layers!r}")
        return cls(**kwargs, model_layers=layers)


def _setting(f):
    kind, optional = f.type, False
    if isinstance(kind, types.UnionType):  # "int | None"
        (kind,) = [t for t in kind.__args__ if t is not type(None)]
        optional = True
    meta = dict(f.metadata)
    return Setting(name=f.name, kind=kind, default=f.default, optional=optional, **meta)


#: Every setting by name, in :class:`TrainConfig` field order (``model_layers`` is not a setting).
SETTINGS = {f.name: _setting(f) for f in fields(TrainConfig) if not f.metadata.get("derived")}
#: The settings that describe the model itself (recorded in model files).
ARCHITECTURE = [name for name, spec in SETTINGS.items() if spec.architecture]
#: The settings that change the time of a training step.
COST = [name for name, spec in SETTINGS.items() if spec.cost]


#: Presets' own defaults for the settings not given, measured (README, "Measured accuracy"):
#: ``cnn-bn`` reaches >= 99.4 % MNIST test accuracy with them in under 15 minutes on 2 cores.
MODEL_DEFAULTS = {
    "cnn-bn": {"epochs": 15, "augment_shift": 2},
}


def make_config(settings, where=None):
    """A :class:`TrainConfig` from a dict of settings (the command line's, a study file's table).

    Each value becomes its field's type: an integer given for a float setting
    (``lr = 1`` in a TOML file) becomes a float, so the same setting always
    gives the same run key. Settings not given take the model's own defaults
    (:data:`MODEL_DEFAULTS`), else ``npconv train``'s. An unknown name or a
    wrongly typed value raises :class:`~npconv.errors.SettingError`; ranges are
    checked by :meth:`TrainConfig.validate`.
    """
    model = settings.get("model", SETTINGS["model"].default)
    settings = {**(MODEL_DEFAULTS.get(model, {}) if isinstance(model, str) else {}), **settings}  # else: an error
    values = {}
    for name, value in settings.items():
        spec = SETTINGS.get(name)
        if name == "model_layers":  # a config's own fields (vars(config)) come back as they were
            values[name] = value
            continue
        if spec is None:
            raise SettingError(name, "is not a training setting; known: " + ", ".join(SETTINGS))
        if not spec.has_type(value):
            raise SettingError(name, f"must be {spec.kind.__name__}, got {value!r}")
        values[name] = spec.coerce(value)
    return TrainConfig(**values)
