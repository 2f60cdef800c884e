"""Model files, and the safe npz reader that model and checkpoint files share.

``model.npz`` holds the weights and what is needed to rebuild the model.
Layout of the npz archive (plain arrays only, so it loads with ``allow_pickle=False``):

* one float array per parameter, under its PyTorch-style name (``"0.weight"``, ...);
* ``"__config__"``: a 0-d unicode string holding JSON -- the model's name,
  dropout settings, dtype and the input normalization used in training.

Model files get shared between people, so a file is never trusted:
:func:`read_npz` reads the archive itself instead of ``np.load``. It checks each
array's header -- no object arrays, only plain numeric or string dtypes, and a
shape whose size matches the bytes the archive really holds -- *before* it
allocates anything, and caps the total size, so a header claiming 10^12
elements fails at once instead of trying to allocate. Loading then checks the
config's every field and every array's name, shape and dtype against the model
it describes. Nothing from a file is ever executed or ``eval``-ed (the npy
header is parsed with :func:`ast.literal_eval`, which only reads literals).
"""

import json
import math
import struct
import zipfile
import zlib

import numpy as np

from . import backend as B
from .errors import ModelFileError
from .fileio import atomic_write
from .models import DROPOUT_LOCATIONS, MODELS, build_model

CONFIG_KEY = "__config__"
FORMAT = "npconv-model-1"

#: Largest total of array bytes an npz file may announce (512 MiB; the study's
#: models are under 1 MiB). Checked before anything is read.
MAX_NPZ_BYTES = 1 << 29
#: Largest number of arrays in one npz file.
MAX_NPZ_ARRAYS = 10_000
#: Largest number of classes a model file may declare.
MAX_CLASSES = 10_000

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


def _one_line(error):
    """An exception's message on one line (some messages quote data with newlines)."""
    return " ".join(str(error).split()) or type(error).__name__


def read_npz(path, what="model file", error=ModelFileError):
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
        raise error(f"{path}: damaged or not an npz {what} ({_one_line(e)})") from None


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
        raise error(f"{where} is not valid JSON ({_one_line(e)})") from None
    if not isinstance(obj, dict):
        raise error(f"{where} is not a JSON object")
    return obj


def save_model(path, model, config):
    """Write ``model``'s weights and ``config`` (a JSON-able dict) to ``path`` atomically.

    ``config`` must hold at least ``model``, ``dropout``, ``dropout_at`` and ``dtype``.
    """
    arrays = {name: B.to_numpy(a) for name, a in model.state_dict().items()}
    arrays[CONFIG_KEY] = json_entry({"format": FORMAT, **config})
    write_npz(path, arrays)


def check_model_config(config, where, error):
    """Check the architecture fields of a model config from a file; return build_model's arguments."""

    def bad(key, accepted):
        raise error(f"{where}: {key!r} must be {accepted}, got {config.get(key)!r}")

    model = config.get("model")
    if not isinstance(model, str) or model not in MODELS:
        bad("model", "one of " + ", ".join(MODELS))
    dtype = config.get("dtype")
    if dtype not in ("float32", "float64"):
        bad("dtype", "float32 or float64")
    num_classes = config.get("num_classes", 10)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 1 <= num_classes <= MAX_CLASSES:
        bad("num_classes", f"an integer from 1 to {MAX_CLASSES}")
    dropout = config.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        bad("dropout", "a number in [0, 1)")
    dropout_at = config.get("dropout_at", "before-fc")
    if not isinstance(dropout_at, str) or dropout_at not in DROPOUT_LOCATIONS:
        bad("dropout_at", "one of " + ", ".join(DROPOUT_LOCATIONS))
    return dict(name=model, dropout=dropout, dropout_at=dropout_at, num_classes=num_classes, dtype=dtype)


def build_checked_model(arrays, config, where, error):
    """Rebuild the model ``config`` describes and load ``arrays`` into it, checking everything."""
    spec = check_model_config(config, where, error)
    try:
        model = build_model(
            spec["name"], spec["dropout"], spec["dropout_at"], num_classes=spec["num_classes"],
            rng=np.random.default_rng(0), dtype=spec["dtype"],
        )
        model.load_state_dict(arrays)
    except (ValueError, TypeError) as e:
        raise error(f"{where}: the arrays do not fit the {spec['name']} architecture: {_one_line(e)}") from None
    return model


def load_model(path):
    """Load a model file written by :func:`save_model`; returns ``(model, config)``.

    Raises :class:`~npconv.errors.ModelFileError` with a message naming the file
    for anything that is not a well-formed npconv model file.
    """
    path = str(path)
    arrays = read_npz(path, "model file", ModelFileError)
    if CONFIG_KEY not in arrays:
        raise ModelFileError(f"{path}: not an npconv model file (no {CONFIG_KEY} entry)")
    config = parse_json_entry(arrays.pop(CONFIG_KEY), f"{path}: its {CONFIG_KEY} entry", ModelFileError)
    if config.get("format") != FORMAT:
        raise ModelFileError(f"{path}: unknown model file format {config.get('format')!r} (expected {FORMAT})")
    for key in ("normalize_mean", "normalize_std"):
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or (key == "normalize_std" and value <= 0)):
            raise ModelFileError(f"{path}: {key!r} must be a finite number (std > 0) or null, got {value!r}")
    dataset = config.get("dataset")
    if dataset is not None and not isinstance(dataset, str):
        raise ModelFileError(f"{path}: 'dataset' must be a dataset name, got {dataset!r}")
    classes = config.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise ModelFileError(f"{path}: 'classes' must be a list of strings, got {classes!r}")
    model = build_checked_model(arrays, config, path, ModelFileError)
    num_classes = config.get("num_classes", 10)
    if classes is not None and len(classes) != num_classes:
        raise ModelFileError(f"{path}: {len(classes)} class names for {num_classes} classes")
    config.setdefault("num_classes", num_classes)
    return model, config
