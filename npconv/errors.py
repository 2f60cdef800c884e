"""The one exception type for mistakes a user can fix.

Anything that is the user's doing -- a bad option value, a missing or malformed
file, a model file that does not fit -- raises :class:`NpconvError` (or a
subclass) with a message that names the thing at fault. The command line turns
it into one line on stderr and exit status 2 (see :mod:`npconv.cli`); library
users can catch it. Bugs in npconv itself stay ordinary Python exceptions.
"""


class NpconvError(Exception):
    """A user-facing error: the message is complete and fit to print as is."""


class DataError(NpconvError):
    """A dataset file is missing, malformed, or fails its checksum."""


class ModelFileError(NpconvError):
    """A model file cannot be loaded: not an npz, damaged, or does not fit its architecture."""


class CheckpointError(NpconvError):
    """A checkpoint or run folder cannot be resumed: missing, damaged, or not of this run."""
