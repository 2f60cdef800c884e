"""Atomic file writes: a reader sees the old complete file or the new one, never a torn one.

The content goes to a temporary file in the same folder, is flushed and
fsync'ed, and is then renamed over the target; a rename within one file system
is atomic. A crash mid-write leaves at worst a stray ``.tmp`` file beside it.
"""

import contextlib
import json
import os
import tempfile


@contextlib.contextmanager
def atomic_write(path, mode="w+b"):
    """Open a temporary file that replaces ``path`` only once it is complete.

    ``mode`` is ``"w+b"`` (binary; the content can be read back and checked
    before it is committed) or ``"w"`` (UTF-8 text). When the ``with`` block
    ends normally the file is flushed, fsync'ed and renamed over ``path``. If
    the block raises, the temporary file is removed and ``path`` is left as it
    was. The folder of ``path`` must exist.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; ours are ordinary files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path, obj):
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
