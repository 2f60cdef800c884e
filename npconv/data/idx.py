"""Reading and writing the IDX format, the file format MNIST is published in.

An IDX file is a header followed by the array's elements, row-major, big-endian::

    offset  size     meaning
    0       2        zero bytes  00 00
    2       1        type code   (table below)
    3       1        ndim        number of dimensions
    4       4·ndim   dims        each an unsigned 32-bit big-endian integer
    4+4·ndim         payload     prod(dims) · itemsize bytes, nothing after it

    type code   element                 NumPy dtype in the file
    0x08        unsigned byte           uint8
    0x09        signed byte             int8
    0x0B        short                   >i2
    0x0C        int                     >i4
    0x0D        float                   >f4
    0x0E        double                  >f8

A file may also be gzip-compressed as a whole (MNIST ships that way); it is
recognised by gzip's magic bytes ``1f 8b``, never by its extension.

Reading trusts nothing in the header: the payload size it implies is checked
against a cap and against the size of the file before any array is allocated,
and the payload must be exactly that long -- shorter and longer are both errors.
Every problem with a file raises :class:`~npconv.errors.DataError` whose message
starts with the file's path.
"""

import gzip
import hashlib
import math
import os
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..io.atomic import atomic_write

#: IDX type code -> dtype of the elements as stored in the file (big-endian).
IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

#: Largest number of dimensions accepted. The format allows 255; no real
#: dataset needs more than 4 (N, C, H, W), and a larger value is far more
#: likely a damaged header than a real file.
MAX_NDIM = 4

#: Largest payload, in bytes, that a header may announce (2 GiB). A header is
#: rejected above this before anything is allocated or decompressed.
MAX_PAYLOAD_BYTES = 2**31

#: Deflate cannot compress better than about 1032:1, so a gzip file of ``S``
#: bytes cannot decompress to more than this many times ``S`` bytes. Checked
#: before allocating, so a tiny gzip file with a huge header fails fast.
_MAX_DEFLATE_RATIO = 1100

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK_BYTES = 1 << 20


def read_idx(path):
    """Read an IDX file, raw or gzip-compressed, into a NumPy array.

    Parameters
    ----------
    path : str or os.PathLike
        The file. Gzip compression is detected from the content.

    Returns
    -------
    numpy.ndarray
        Shape ``dims`` from the header (1 to 4 dimensions, each >= 1), dtype
        from the type code in native byte order: uint8, int8, int16, int32,
        float32 or float64. The array is writable and owns its memory.

    Raises
    ------
    DataError
        ``"<path>: <what is wrong>"`` for a missing or unreadable file, a bad
        header, a payload shorter or longer than the header implies, or a
        truncated or corrupt gzip stream.
    """
    array, _ = read_idx_with_sha256(path)
    return array


def read_idx_with_sha256(path):
    """Read an IDX file and the SHA-256 of its decompressed bytes in one pass.

    Hashing while reading means a dataset is verified without decompressing
    or hashing any file twice.

    Parameters
    ----------
    path : str or os.PathLike
        The file, raw or gzip-compressed.

    Returns
    -------
    array : numpy.ndarray
        As :func:`read_idx`.
    sha256 : str
        Hex SHA-256 of the decompressed file (header and payload), the same
        for a file and its gzip-compressed copy.

    Raises
    ------
    DataError
        As :func:`read_idx`.
    """
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot open IDX file ({e.strerror or e})") from None
    with f:
        return read_idx_fileobj(f, str(path))


def read_idx_fileobj(f, name):
    """Read an IDX array from an open binary file positioned at its start.

    The building block of :func:`read_idx_with_sha256`, for callers that
    already hold the file open (a download being verified before it is
    renamed into place).

    Parameters
    ----------
    f : binary file object
        A real file (``fileno()`` must work), raw or gzip-compressed.
    name : str
        What to call the file in error messages, normally its path.

    Returns
    -------
    array : numpy.ndarray
        As :func:`read_idx`.
    sha256 : str
        As :func:`read_idx_with_sha256`.
    """
    try:
        start = f.tell()
        file_bytes = os.fstat(f.fileno()).st_size - start
        is_gzip = f.read(2) == _GZIP_MAGIC
        f.seek(start)
    except OSError as e:
        raise DataError(f"{name}: cannot read IDX file ({e.strerror or e})") from None

    if not is_gzip:
        return _read_stream(f, name, file_bytes=file_bytes, max_stream_bytes=file_bytes)
    try:
        with gzip.GzipFile(fileobj=f, mode="rb") as stream:
            return _read_stream(
                stream, name, file_bytes=None, max_stream_bytes=file_bytes * _MAX_DEFLATE_RATIO
            )
    except (OSError, EOFError, zlib.error) as e:
        # gzip raises BadGzipFile (an OSError) for a bad header or CRC,
        # EOFError for a stream cut short, zlib.error for corrupt deflate data.
        raise DataError(f"{name}: corrupt or truncated gzip data ({e})") from None


def _read_stream(stream, name, file_bytes, max_stream_bytes):
    """Parse header and payload from ``stream`` (decompressed bytes).

    ``file_bytes`` is the exact stream length for a raw file, None for gzip
    (its decompressed length is unknown until it has been read).
    ``max_stream_bytes`` is an upper bound on the stream length.
    """
    hasher = hashlib.sha256()
    head = _read_header_bytes(stream, name, 4, "magic number")
    if head[0] != 0 or head[1] != 0:
        raise DataError(
            f"{name}: not an IDX file (magic number starts with {head[:2].hex()}, expected 0000)"
        )
    type_code, ndim = head[2], head[3]
    if type_code not in IDX_DTYPES:
        known = ", ".join(f"0x{code:02X}" for code in IDX_DTYPES)
        raise DataError(f"{name}: unknown IDX type code 0x{type_code:02X} (known: {known})")
    if not 1 <= ndim <= MAX_NDIM:
        raise DataError(f"{name}: IDX header has {ndim} dimensions, expected 1 to {MAX_NDIM}")

    dims_bytes = _read_header_bytes(stream, name, 4 * ndim, f"{ndim} dimension sizes")
    dims = tuple(int.from_bytes(dims_bytes[4 * i : 4 * i + 4], "big") for i in range(ndim))
    if 0 in dims:
        raise DataError(f"{name}: IDX header has a dimension of size 0 (dims {dims})")

    dtype = IDX_DTYPES[type_code]
    header_bytes = 4 + 4 * ndim
    # Python ints: the product cannot overflow however absurd the header.
    payload_bytes = math.prod(dims) * dtype.itemsize
    if payload_bytes > MAX_PAYLOAD_BYTES:
        raise DataError(
            f"{name}: IDX header announces {payload_bytes} bytes of data (dims {dims}), "
            f"more than the limit of {MAX_PAYLOAD_BYTES}; the header is probably damaged"
        )
    if file_bytes is not None and file_bytes != header_bytes + payload_bytes:
        problem = "truncated" if file_bytes < header_bytes + payload_bytes else "has extra bytes"
        raise DataError(
            f"{name}: file {problem}: it is {file_bytes} bytes but its header "
            f"(dims {dims}, {dtype.itemsize}-byte elements) implies {header_bytes + payload_bytes}"
        )
    if header_bytes + payload_bytes > max_stream_bytes:
        raise DataError(
            f"{name}: IDX header announces {payload_bytes} bytes of data (dims {dims}), "
            f"more than a file of this size can hold"
        )

    # One byte more than expected, so a payload that is too long shows up.
    buffer = np.empty(payload_bytes + 1, dtype=np.uint8)
    filled = _read_into(stream, memoryview(buffer))
    if filled < payload_bytes:
        raise DataError(
            f"{name}: file truncated: header (dims {dims}) implies {payload_bytes} bytes of data, "
            f"got {filled}"
        )
    if filled > payload_bytes:
        raise DataError(
            f"{name}: file has extra bytes: header (dims {dims}) implies {payload_bytes} bytes of data, "
            f"got more"
        )

    payload = buffer[:payload_bytes]
    hasher.update(head)
    hasher.update(dims_bytes)
    hasher.update(memoryview(payload))
    array = payload.view(dtype).reshape(dims)
    if dtype.itemsize > 1:
        # Arithmetic on big-endian arrays is slow on every common CPU.
        array = array.astype(dtype.newbyteorder("="))
    return array, hasher.hexdigest()


def _read_header_bytes(stream, name, count, what):
    """Read exactly ``count`` header bytes or raise a DataError naming ``what``."""
    data = stream.read(count)
    if len(data) != count:
        raise DataError(f"{name}: file too short for an IDX header (ends inside the {what})")
    return data


def _read_into(stream, view):
    """Fill ``view`` from ``stream`` until it is full or the stream ends; return bytes read."""
    filled = 0
    while filled < len(view):
        n = stream.readinto(view[filled : filled + _CHUNK_BYTES])
        if not n:
            break
        filled += n
    return filled


def write_idx(path, array):
    """Write ``array`` as an IDX file, gzip-compressed if ``path`` ends in ``.gz``.

    The file appears atomically: it is written to a temporary file in the same
    directory, flushed to disk and renamed over ``path``, so a reader never
    sees half a file. Gzip output is deterministic (no name, no timestamp).

    Parameters
    ----------
    path : str or os.PathLike
        Destination; its directory must exist.
    array : array_like
        1 to 4 dimensions, each of size >= 1 and < 2**32; dtype uint8, int8,
        int16, int32, float32 or float64 (any byte order; written big-endian).

    Raises
    ------
    ValueError
        If the array's dtype or shape cannot be stored in an IDX file.
    """
    array = np.asarray(array)
    type_code = _type_code_for(array.dtype)
    if not 1 <= array.ndim <= MAX_NDIM:
        raise ValueError(f"IDX arrays must have 1 to {MAX_NDIM} dimensions, got shape {array.shape}")
    if any(not 1 <= d < 2**32 for d in array.shape):
        raise ValueError(f"IDX dimensions must be between 1 and 2**32 - 1, got shape {array.shape}")

    header = bytes([0, 0, type_code, array.ndim]) + b"".join(
        d.to_bytes(4, "big") for d in array.shape
    )
    payload = np.ascontiguousarray(array, dtype=IDX_DTYPES[type_code])
    path = Path(path)
    with atomic_write(path) as f:
        if path.suffix == ".gz":
            with gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) as gz:
                gz.write(header)
                gz.write(memoryview(payload).cast("B"))
        else:
            f.write(header)
            f.write(memoryview(payload).cast("B"))


def _type_code_for(dtype):
    """The IDX type code whose element type equals ``dtype`` (any byte order)."""
    for code, file_dtype in IDX_DTYPES.items():
        if dtype.newbyteorder("=") == file_dtype.newbyteorder("="):
            return code
    names = ", ".join(str(d.newbyteorder("=")) for d in IDX_DTYPES.values())
    raise ValueError(f"IDX cannot store dtype {dtype}; use one of {names}")
