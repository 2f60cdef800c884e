"""The untrusting npz reader and writer that model files and checkpoints share.

Model files and checkpoints get shared between people, so a file is never
trusted: :func:`read_npz` reads the archive itself instead of ``np.load``. It
checks each array's header -- no object arrays, only plain numeric or string
dtypes, and a shape whose size matches the bytes the archive really holds --
*before* it allocates anything, and caps the total size, so a header claiming
10^12 elements fails at once instead of trying to allocate. Nothing from a file
is ever executed or ``eval``-ed (the npy header is parsed with
:func:`ast.literal_eval`, which only reads literals).

JSON metadata rides along as a 0-d unicode array (:func:`json_entry`), the form
an npz can hold without pickling, so every file loads with ``allow_pickle=False``.
"""

import json
import math
import struct
import zipfile
import zlib

import numpy as np

from ..errors import NpconvError
from .atomic import atomic_write

#: Largest total of array bytes an npz file may announce (512 MiB; the study's
#: models are under 1 MiB). Checked before anything is read.
MAX_NPZ_BYTES = 1 << 29
#: Largest number of arrays in one npz file.
MAX_NPZ_ARRAYS = 10_000

_ZIP_MAGIC = b"PK\x03\x04"
# Element kinds an npconv file may hold: bool, signed and unsigned integers,
# floats, unicode strings. Never objects ("O"), void/structured ("V") or others.
_ALLOWED_KINDS = "biufU"
# What reading a damaged archive can raise, besides our own errors: zipfile
# raises BadZipFile, NotImplementedError (unknown compression), RuntimeError
# (encrypted entries), EOFError, struct.error or zlib.error; the npy header
# parser ValueError; a file system OSError.
_READ_ERRORS = (
    ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError, NotImplementedError, RuntimeError,
    struct.error, zlib.error, OverflowError, RecursionError,
)


def one_line(error):
    """An exception's message on one line (some messages quote data with newlines)."""
    return " ".join(str(error).split()) or type(error).__name__


def read_npz(path, what="npz file", error=NpconvError):
    """Read every array of an npz archive, trusting nothing in it.

    Parameters
    ----------
    path : str or os.PathLike
    what : str
        What the file should be, for messages ("model file", "checkpoint").
    error : type
        The :class:`~npconv.errors.NpconvError` subclass to raise.

    Returns
    -------
    dict[str, numpy.ndarray]
        Array name (the entry name without ``.npy``) -> a new, writable,
        native-byte-order array.

    Raises
    ------
    error
        ``"<path>: <what is wrong>"`` on one line: no such file, not a zip
        archive, damaged or truncated archive, an entry that is not an npy
        array, an object or other unsupported dtype, a header whose shape does
        not match the bytes stored, more than :data:`MAX_NPZ_BYTES` of data.
    """
    path = str(path)
    try:
        with open(path, "rb") as f:
            if f.read(4) != _ZIP_MAGIC:  # every npz archive is a zip file
                raise error(f"{path}: not an npz {what} (not a zip archive)")
            f.seek(0)
            with zipfile.ZipFile(f) as archive:
                return _read_members(archive, path, what, error)
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, not a {what}") from None
    except error:
        raise
    except _READ_ERRORS as e:
        raise error(f"{path}: damaged or not an npz {what} ({one_line(e)})") from None


def _read_members(archive, path, what, error):
    infos = archive.infolist()
    if len(infos) > MAX_NPZ_ARRAYS:
        raise error(f"{path}: {len(infos)} entries, more than a {what} can hold ({MAX_NPZ_ARRAYS})")
    total = sum(info.file_size for info in infos)
    if total > MAX_NPZ_BYTES:
        raise error(f"{path}: announces {total} bytes of data, more than the limit of {MAX_NPZ_BYTES}")
    arrays = {}
    for info in infos:
        if not info.filename.endswith(".npy"):
            raise error(f"{path}: entry {info.filename!r} is not an array (an npz {what} holds only .npy entries)")
        key = info.filename[: -len(".npy")]
        if key in arrays:
            raise error(f"{path}: array {key!r} is stored twice")
        with archive.open(info) as member:
            arrays[key] = _read_npy(member, info.file_size, f"{path}: array {key!r}", error)
    return arrays


def _read_npy(member, size, where, error):
    """One npy entry of ``size`` bytes; its header is checked before any allocation."""
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(member)
    elif version == (2, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(member)
    else:
        raise error(f"{where}: npy format version {version[0]}.{version[1]} is not supported")
    if dtype.hasobject:
        raise error(f"{where} holds Python objects; refused, since loading them could run code")
    if dtype.kind not in _ALLOWED_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise error(f"{where}: dtype {dtype} is not a plain number or string type")
    if any(d < 0 for d in shape):
        raise error(f"{where}: negative dimension in shape {shape}")
    header_bytes = member.tell()
    data_bytes = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    if header_bytes + data_bytes != size:
        raise error(
            f"{where}: its header (shape {shape}, {dtype}) implies {data_bytes} bytes of data, "
            f"the archive holds {size - header_bytes}"
        )
    data = member.read(data_bytes)
    if len(data) != data_bytes:
        raise error(f"{where}: truncated ({len(data)} of {data_bytes} bytes)")
    array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran_order else "C")
    # A writable copy in native byte order, C-contiguous (0-d arrays stay 0-d).
    return array.astype(dtype.newbyteorder("="), order="C", copy=True)


def write_npz(path, arrays):
    """Write ``{name: array}`` as an uncompressed npz archive, atomically."""
    with atomic_write(path) as f:
        np.savez(f, **arrays)


def json_entry(obj):
    """``obj`` as JSON in a 0-d unicode array, the form an npz can hold without pickling."""
    return np.array(json.dumps(obj, allow_nan=True))


def parse_json_entry(array, where, error):
    """The JSON object in a 0-d unicode array written by :func:`json_entry`; must be a dict."""
    if not isinstance(array, np.ndarray) or array.dtype.kind != "U" or array.ndim != 0:
        raise error(f"{where} is not a JSON string")
    try:
        obj = json.loads(str(array))
    except (ValueError, RecursionError) as e:
        raise error(f"{where} is not valid JSON ({one_line(e)})") from None
    if not isinstance(obj, dict):
        raise error(f"{where} is not a JSON object")
    return obj
