"""Safe files: atomic writes, and an exclusive lock on a run folder.

**Atomic writes.** The content goes to a temporary file in the same folder, is
flushed and fsync'ed, and is then renamed over the target; a rename within one
file system is atomic. A crash, or ``kill -9``, at any moment leaves either the
old complete file or the new complete file, never a torn one -- at worst a
stray ``.NAME.*.tmp`` file beside it. Every file npconv writes goes through
:func:`atomic_write`.

**Folder locks.** :func:`lock_dir` holds an exclusive, non-blocking
``flock`` on ``FOLDER/.lock`` while a process writes into that folder, so two
npconv processes can never train into the same run folder at once; the second
gets a clear :class:`~npconv.errors.NpconvError` naming the first one's pid.
The kernel drops the lock when its holder exits, however it exits, so a
crashed run never leaves a folder locked. Many runs at once (a sweep) each
write their own run folder under this lock; they never share a file.
"""

import contextlib
import json
import os
import tempfile

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX (Windows): folders are not locked
    fcntl = None

from ..errors import NpconvError

#: The lock file :func:`lock_dir` creates in a folder (left in place: removing
#: it while another process waits on it would let two processes hold "the" lock).
LOCK_FILE = ".lock"


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


@contextlib.contextmanager
def lock_dir(folder):
    """Hold an exclusive lock on ``folder`` (which must exist) for the ``with`` block.

    The lock is an ``flock(LOCK_EX | LOCK_NB)`` on ``folder/.lock``, which
    then holds the holder's pid. It never waits: if another process holds the
    lock, :class:`~npconv.errors.NpconvError` is raised at once with
    ``"FOLDER is in use by another npconv process (pid N)"``. The lock is
    released when the block ends or the process dies.
    """
    folder = os.fspath(folder)
    if fcntl is None:  # pragma: no cover
        yield
        return
    try:
        fd = os.open(os.path.join(folder, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise NpconvError(f"{folder}: cannot create its lock file ({e.strerror or e})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise NpconvError(
                f"{folder} is in use by another npconv process (pid {_lock_holder(fd)}); "
                "wait for it to finish or use another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def locked_by(folder):
    """The pid (text) of the process holding ``folder``'s lock, or None when no process holds it.

    Looks without writing anything: the lock file is opened read-only and
    locked for an instant (never waiting), then released.
    """
    path = os.path.join(os.fspath(folder), LOCK_FILE)
    if fcntl is None:  # pragma: no cover
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # no lock file: nobody ever trained here, or it cannot be read
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return _lock_holder(fd)
    finally:
        os.close(fd)  # releases the lock, if this process got it


def _lock_holder(fd):
    """The pid written in a lock file, or ``"unknown"`` (the holder may not have written it yet)."""
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return text if text.isdigit() else "unknown"


def read_json(path, what="JSON file", error=NpconvError):
    """A JSON object from ``path``; ``error`` (an NpconvError subclass) names the file if it is missing or malformed."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, not a {what}") from None
    except (OSError, ValueError, RecursionError) as e:
        raise error(f"{path}: cannot be read as JSON ({' '.join(str(e).split())})") from None
    if not isinstance(obj, dict):
        raise error(f"{path}: not a JSON object")
    return obj
