"""The command line's options, derived from the settings schema, and the library's names in the CLI's words.

Every training setting (:data:`npconv.train.settings.SETTINGS`) becomes one
``npconv train`` option and one ``npconv sweep`` grid option here: its flag,
its type or choices, its help and its default all come from the setting. The
library names parameters as Python does (``lr``, ``out_dir``); :func:`flag`
turns such a name into the flag a user typed, so that errors speak the user's
language (:func:`error_message`).
"""

import argparse

from ..errors import RunFolderTaken, SettingError
from ..train.settings import MODEL_DEFAULTS, SETTINGS

#: Exit status of a user error (argparse's own).
EXIT_USAGE = 2

#: Parameters of library functions that have a flag of another name.
_FLAGS = {"out_dir": "--out", "run_dir": "--resume", "plot_path": "--out"}


def flag(name):
    """The command-line flag of a library parameter or setting: ``weight_decay`` -> ``--weight-decay``."""
    return _FLAGS.get(name) or "--" + name.replace("_", "-")


def error_message(error):
    """An :class:`~npconv.errors.NpconvError`'s one line, in the command line's words."""
    if isinstance(error, RunFolderTaken):
        return (f"--out {error.path}: already holds a run ({error.file}); continue it with --resume {error.path}, "
                "or choose another folder")
    if isinstance(error, SettingError):
        return flag(error.name) + ("" if error.detail.startswith(":") else " ") + error.detail
    return str(error)


def _choices(spec):
    """``cnn|mlp|...|FILE.toml``: a setting's choices as a metavar."""
    return "|".join(spec.choices) + (f"|FILE{spec.file_suffix}" if spec.file_suffix else "")


def _help(spec):
    default = "all" if spec.default is None and spec.name == "train_subset" else spec.default
    if spec.kind is bool:
        return f"{spec.help} (default: {'on' if default else 'off'})"
    if default is None:
        return spec.help
    own = "".join(f"; {values[spec.name]} for {model}" for model, values in MODEL_DEFAULTS.items()
                  if spec.name in values)
    return f"{spec.help} (default: {default}{own})"


def add_train_options(parser):
    """One option per training setting. Defaults stay None, so that the caller can tell which were given."""
    for spec in SETTINGS.values():
        if spec.kind is bool:  # a switch that turns the default off (or on)
            off = spec.default
            name = f"--no-{spec.name.replace('_', '-')}" if off else spec.flag
            parser.add_argument(name, dest=spec.name, action="store_const", const=not off,
                                help=f"{'do not ' if off else ''}{spec.help} (default: it does"
                                     f"{'' if off else ' not'})")
        elif spec.choices is not None and not spec.file_suffix:
            parser.add_argument(spec.flag, dest=spec.name, choices=spec.choices, help=_help(spec))
        elif spec.choices is not None:  # a choice or a file: checked by the settings, not by argparse
            parser.add_argument(spec.flag, dest=spec.name, metavar=_choices(spec), help=_help(spec))
        else:
            kind = str if spec.kind is str else spec.kind
            parser.add_argument(spec.flag, dest=spec.name, type=kind, metavar=spec.metavar or "X", help=_help(spec))


def add_grid_options(parser):
    """One grid option per training setting: a comma-separated list of values (``--lr 0.01,0.1``)."""
    for spec in SETTINGS.values():
        if spec.choices is not None:
            what = _choices(spec)
        elif spec.kind is bool:
            what = "true|false"
        else:
            what = spec.metavar or "X"
        parser.add_argument(spec.flag, dest=spec.name, metavar=f"{what}[,...]",
                            help=f"comma-separated values of: {_help(spec)}")


def settings_given(args):
    """``{setting: value}`` of the training options given on the command line (not None)."""
    return {name: getattr(args, name) for name in SETTINGS if getattr(args, name, None) is not None}


def positive_int(text):
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value
