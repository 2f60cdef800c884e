"""The one exception type for mistakes a user can fix.

Anything that is the user's doing -- a bad option value, a missing or malformed
file, a model file (``model.npz``) that does not fit -- raises :class:`NpconvError` (or a
subclass) with a message that names the thing at fault. The command line turns
it into one line on stderr and exit status 2 (see :mod:`npconv.cli`); library
users can catch it. Bugs in npconv itself stay ordinary Python exceptions.
"""

import math
import numbers


class NpconvError(Exception):
    """A user-facing error: the message is complete and fit to print as is."""


class DataError(NpconvError):
    """A dataset file is missing, malformed, or fails its checksum."""


class ModelFileError(NpconvError):
    """A model file cannot be loaded: not an npz, damaged, or does not fit its architecture."""


class CheckpointError(NpconvError):
    """A checkpoint or run folder cannot be resumed: missing, damaged, or not of this run."""


class SettingError(NpconvError):
    """A setting or parameter has a value the library cannot accept.

    The message names the parameter as the library calls it (``lr must be a
    finite number > 0, got -1.0``); ``name`` and ``detail`` let a front end
    say it in its own words (the command line: ``--lr must be ...``).
    """

    def __init__(self, name, detail):
        super().__init__(name + ("" if detail.startswith(":") else " ") + detail)
        self.name = name
        self.detail = detail


class RunFolderTaken(SettingError):
    """The output folder of a new run already holds a run (its ``config.json`` or checkpoint, named ``file``)."""

    def __init__(self, path, file):
        super().__init__("out_dir", f"{path}: already holds a run ({file}); continue it with resume_training, "
                                    "or choose another folder")
        self.path = path
        self.file = file


# --- small checks of values that come from users and files ------------------------------------------------


def is_int(value):
    """An integer (Python's or NumPy's), and not a bool (``True`` is an ``int`` in Python, never a count here)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value):
    """A finite int or float, and not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
