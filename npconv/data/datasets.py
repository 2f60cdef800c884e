"""The known datasets (MNIST, Fashion-MNIST): where to find them, how to check them, how to load them.

Each known dataset is four IDX files (see :mod:`npconv.data.idx`)::

    train-images-idx3-ubyte   uint8 (N_train, 28, 28)
    train-labels-idx1-ubyte   uint8 (N_train,)        values 0..9
    t10k-images-idx3-ubyte    uint8 (N_test, 28, 28)
    t10k-labels-idx1-ubyte    uint8 (N_test,)         values 0..9

each stored raw or gzip-compressed (``name`` or ``name.gz``). A file is
identified by the SHA-256 of its *decompressed* content, so a file recompressed
by someone else (Debian, our own vendored copy) still matches.

:func:`load_dataset` looks in these places, in order, and uses the first that
holds all four files:

1. ``data_dir`` if given -- and only there. Any IDX dataset of that shape is
   accepted; checksums are not enforced, the structure is.
2. Otherwise the built-in sources, where checksums are enforced:
   a. the copy shipped inside the package, ``npconv/data/<name>/`` (MNIST only);
   b. a system-wide copy (Fashion-MNIST from Debian's ``dataset-fashion-mnist``
      in ``/usr/share/datasets/fashion-mnist/``);
   c. the user cache, :func:`cache_dir` -- ``$NPCONV_DATA_DIR/<name>``, else
      ``$XDG_CACHE_HOME/npconv/<name>``, else ``~/.cache/npconv/<name>``.
   If none has the files they are downloaded from the dataset's mirrors into
   the cache, checked, and loaded.
"""

import contextlib
import hashlib
import os
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..io.atomic import atomic_write
from .idx import MAX_PAYLOAD_BYTES, read_idx_fileobj, read_idx_with_sha256

#: The four parts of a dataset, in the fixed order used everywhere, including
#: the combined digest :attr:`Dataset.sha256`.
PARTS = ("train_images", "train_labels", "test_images", "test_labels")

#: File names (decompressed) of the four parts; the same for MNIST and Fashion-MNIST.
IDX_FILE_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

#: Seconds to wait for a mirror before trying the next one.
DOWNLOAD_TIMEOUT_S = 30.0

_PACKAGE_DATA_DIR = Path(__file__).resolve().parent

_MNIST_LICENCE = (
    "The MNIST database of handwritten digits, by Yann LeCun, Corinna Cortes and "
    "Christopher J.C. Burges (http://yann.lecun.com/exdb/mnist/), is made available under "
    "the terms of the Creative Commons Attribution-Share Alike 3.0 licence (CC BY-SA 3.0), "
    "https://creativecommons.org/licenses/by-sa/3.0/."
)

_FASHION_MNIST_LICENCE = """\
Fashion-MNIST (https://github.com/zalandoresearch/fashion-mnist)

The MIT License (MIT) Copyright (c) 2017 Zalando SE, https://tech.zalando.com

Permission is hereby granted, free of charge, to any person obtaining a copy of this software \
and associated documentation files (the "Software"), to deal in the Software without \
restriction, including without limitation the rights to use, copy, modify, merge, publish, \
distribute, sublicense, and/or sell copies of the Software, and to permit persons to whom the \
Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or \
substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING \
BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND \
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, \
DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, \
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""


@dataclass(frozen=True)
class DatasetInfo:
    """What npconv knows about a dataset before loading it.

    Attributes
    ----------
    name : str
        Registry key, e.g. ``"mnist"``.
    files : dict[str, str]
        Part (one of :data:`PARTS`) -> decompressed file name.
    sha256 : dict[str, str]
        Decompressed file name -> hex SHA-256 of its content.
    classes : tuple[str, ...]
        Class names; label ``k`` means ``classes[k]``.
    mirrors : tuple[str, ...]
        Base URLs holding ``<file name>.gz``, tried in order.
    homepage : str
        Where the dataset is described.
    licence : str
        The licence the data is distributed under.
    system_dirs : tuple[pathlib.Path, ...]
        System-wide directories that may hold a copy (searched after the
        package's own copy, before the user cache).
    """

    name: str
    files: dict
    sha256: dict
    classes: tuple
    mirrors: tuple
    homepage: str
    licence: str
    system_dirs: tuple = ()


#: The registry of known datasets, by name.
DATASETS = {
    "mnist": DatasetInfo(
        name="mnist",
        files=dict(IDX_FILE_NAMES),
        sha256={
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        classes=tuple(str(digit) for digit in range(10)),
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        homepage="http://yann.lecun.com/exdb/mnist/",
        licence=_MNIST_LICENCE,
    ),
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        files=dict(IDX_FILE_NAMES),
        sha256={
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        classes=(
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ),
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        homepage="https://github.com/zalandoresearch/fashion-mnist",
        licence=_FASHION_MNIST_LICENCE,
        system_dirs=(Path("/usr/share/datasets/fashion-mnist"),),
    ),
}


@dataclass(eq=False)
class Dataset:
    """A loaded dataset: training and test images with their labels.

    Attributes
    ----------
    name : str
        Registry name, e.g. ``"mnist"``.
    train_images : numpy.ndarray
        uint8, shape (N_train, H, W) -- (60000, 28, 28) for MNIST; pixel 0 is
        background, 255 full ink.
    train_labels : numpy.ndarray
        uint8, shape (N_train,), values in ``0 .. len(classes) - 1``.
    test_images : numpy.ndarray
        uint8, shape (N_test, H, W) -- (10000, 28, 28) for MNIST.
    test_labels : numpy.ndarray
        uint8, shape (N_test,).
    classes : list[str]
        Class names; label ``k`` means ``classes[k]``.
    sha256 : str
        One hex digest identifying the content: SHA-256 over the 32-byte
        digests of the four decompressed files, concatenated in the order
        train images, train labels, test images, test labels.
    source : str
        Directory the files were read from.
    file_sha256 : dict[str, str]
        Decompressed file name -> hex SHA-256 of its content.
    """

    name: str
    train_images: np.ndarray = field(repr=False)
    train_labels: np.ndarray = field(repr=False)
    test_images: np.ndarray = field(repr=False)
    test_labels: np.ndarray = field(repr=False)
    classes: list
    sha256: str
    source: str
    file_sha256: dict = field(default_factory=dict, repr=False)

    @property
    def num_classes(self):
        """Number of classes, ``len(classes)``."""
        return len(self.classes)


def load_dataset(name="mnist", data_dir=None, verify=True, *, search_dirs=None, mirrors=None,
                 download=True):
    """Load a known dataset, from ``data_dir`` or the built-in sources.

    Parameters
    ----------
    name : str
        A key of :data:`DATASETS`: ``"mnist"`` or ``"fashion-mnist"``. With
        ``data_dir`` it only chooses the class names.
    data_dir : str or os.PathLike, optional
        Read the four files from this directory and nowhere else. Checksums
        are not enforced (it may hold any IDX dataset of the right structure).
    verify : bool
        Check each file of a built-in source against its known SHA-256. The
        digests are computed while the files are read, so this costs nothing
        extra; turning it off only allows a modified copy.
    search_dirs : sequence of path, optional
        Replace the built-in search path (package copy, system copy, user
        cache). These directories count as built-in sources, so checksums are
        enforced; the last one is where a download goes. For tests.
    mirrors : sequence of str, optional
        Replace the dataset's download mirrors (base URLs). For tests.
    download : bool
        Download the files if no built-in source has them.

    Returns
    -------
    Dataset
        uint8 images (N, H, W) and uint8 labels (N,), as documented there; the arrays are read-only (inside
        :func:`keep_loaded` every load of the same files shares them).

    Raises
    ------
    DataError
        Unknown name; missing files (the message lists which files are
        expected in which directory); a malformed file; images and labels
        that do not fit together; a label >= number of classes; a checksum
        mismatch (naming file, expected and actual digest); a failed download.
    """
    info = dataset_info(name)
    if data_dir is not None:
        data_dir = Path(data_dir)
        return _load_from(info, data_dir, _locate_files(info, data_dir, required=True), check_sha256=False)

    dirs = default_search_dirs(info) if search_dirs is None else [Path(d) for d in search_dirs]
    for directory in dirs:
        paths = _locate_files(info, directory, required=False)
        if paths is not None:
            return _load_from(info, directory, paths, check_sha256=verify)

    destination = dirs[-1]
    wanted = ", ".join(f"{info.files[part]}.gz" for part in PARTS)
    searched = ", ".join(str(d) for d in dirs)
    mirrors = info.mirrors if mirrors is None else tuple(mirrors)
    if not download:
        raise DataError(
            f"{destination}: {info.name} not found (searched {searched}) and downloading is off; "
            f"put {wanted} there (from {mirrors[0] if mirrors else info.homepage}) or pass a data directory"
        )
    try:
        download_files(
            [info.files[part] for part in PARTS], mirrors, destination,
            sha256=info.sha256 if verify else None,
        )
    except DataError as e:
        raise DataError(
            f"{destination}: {info.name} not found (searched {searched}) and the download failed ({e}); "
            f"put {wanted} there (from {mirrors[0] if mirrors else info.homepage}) or pass a data directory"
        ) from None
    return _load_from(info, destination, _locate_files(info, destination, required=True),
                      check_sha256=verify)


def is_available(name):
    """Whether a built-in source on this machine holds dataset ``name``'s files (nothing is read or downloaded)."""
    info = dataset_info(name)
    return any(_locate_files(info, d, required=False) is not None for d in default_search_dirs(info))


def dataset_info(name):
    """The :class:`DatasetInfo` registered as ``name``; DataError if there is none."""
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(sorted(DATASETS))
        raise DataError(f"unknown dataset {name!r}; known datasets: {known}") from None


def default_search_dirs(info):
    """Built-in places to look for ``info``'s files, in order; the last is the download cache.

    Returns
    -------
    list[pathlib.Path]
        ``npconv/data/<name>/``, then ``info.system_dirs``, then :func:`cache_dir`.
    """
    return [_PACKAGE_DATA_DIR / info.name, *info.system_dirs, cache_dir(info.name)]


def cache_dir(name):
    """The user cache directory for dataset ``name`` (not created here).

    ``$NPCONV_DATA_DIR/<name>`` if that variable is set, else
    ``$XDG_CACHE_HOME/npconv/<name>``, else ``~/.cache/npconv/<name>``.
    """
    root = os.environ.get("NPCONV_DATA_DIR")
    if root:
        return Path(root).expanduser() / name
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "npconv" / name


def _locate_files(info, directory, required):
    """Map each part to its file in ``directory`` (``name`` preferred over ``name.gz``).

    Returns None if any file is missing and ``required`` is false; raises a
    DataError listing what is expected where if ``required`` is true.
    """
    paths, missing = {}, []
    for part in PARTS:
        file_name = info.files[part]
        candidates = [directory / file_name, directory / f"{file_name}.gz"]
        found = [p for p in candidates if p.is_file()]
        if found:
            paths[part] = found[0]
        else:
            missing.append(file_name)
    if not missing:
        return paths
    if not required:
        return None
    expected = ", ".join(info.files[part] for part in PARTS)
    if directory.is_dir():
        where = f"missing {', '.join(missing)}"
    else:
        where = "not a directory" if directory.exists() else "directory does not exist"
    raise DataError(
        f"{directory}: {where}; a dataset directory must hold the four IDX files "
        f"{expected} (each raw or gzip-compressed with .gz added)"
    )


#: Datasets kept by :func:`keep_loaded`, for :func:`_load_from`: ``key -> Dataset``, the latest last.
_LOADED = {}

#: How many datasets :data:`_LOADED` keeps (MNIST takes 55 MB).
_KEEP = 2

_keeping = 0  # keep_loaded() blocks open now


@contextlib.contextmanager
def keep_loaded():
    """Within this block, a dataset is read once and kept for the next loads of the same files (read again only
    if a file changed): for a process that trains many runs on the same data (a sweep's worker, a test suite).
    Outside, every load reads the files, and nothing stays in memory after its last user."""
    global _keeping
    _keeping += 1
    try:
        yield
    finally:
        _keeping -= 1
        if not _keeping:
            _LOADED.clear()


def keeping():
    """Whether this process is inside a :func:`keep_loaded` block now."""
    return _keeping > 0


def _load_from(info, directory, paths, check_sha256):
    """The dataset of the four files in ``paths``: read, optionally verified and checked; or, inside
    :func:`keep_loaded`, the one read before from the same unchanged files. Its arrays are read-only (callers may
    share them)."""
    try:
        stamps = tuple((str(paths[part]), *_stamp(paths[part]))
                       for part in PARTS) if _keeping else None
    except OSError:
        stamps = None  # a file that cannot be stat'ed: read it, and let the read say why
    key = (info.name, stamps, check_sha256)
    if stamps is not None and key in _LOADED:
        _LOADED[key] = _LOADED.pop(key)  # the latest last
        return replace(_LOADED[key], classes=list(info.classes), file_sha256=dict(_LOADED[key].file_sha256))
    dataset = _read_from(info, directory, paths, check_sha256)
    for array in (dataset.train_images, dataset.train_labels, dataset.test_images, dataset.test_labels):
        array.flags.writeable = False
    if stamps is not None:
        _LOADED[key] = dataset
        while len(_LOADED) > _KEEP:
            del _LOADED[next(iter(_LOADED))]
    return replace(dataset, classes=list(info.classes), file_sha256=dict(dataset.file_sha256))


def _stamp(path):
    """What changes when a file is rewritten: its size, modification time and inode."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ino


def _read_from(info, directory, paths, check_sha256):
    """Read, optionally verify, and structurally check the four files in ``paths``."""
    arrays, digests = {}, {}
    for part in PARTS:
        path = paths[part]
        arrays[part], digest = read_idx_with_sha256(path)
        file_name = info.files[part]
        expected = info.sha256[file_name]
        if check_sha256 and digest != expected:
            raise DataError(
                f"{path}: SHA-256 of decompressed content is {digest}, expected {expected} "
                f"(damaged or not the original {info.name}; delete it to fetch a fresh copy)"
            )
        digests[file_name] = digest

    _check_structure(info, paths, arrays)
    combined = hashlib.sha256(b"".join(bytes.fromhex(digests[info.files[p]]) for p in PARTS))
    return Dataset(
        name=info.name,
        train_images=arrays["train_images"],
        train_labels=arrays["train_labels"],
        test_images=arrays["test_images"],
        test_labels=arrays["test_labels"],
        classes=list(info.classes),
        sha256=combined.hexdigest(),
        source=str(directory),
        file_sha256=digests,
    )


def _check_structure(info, paths, arrays):
    """Check shapes, dtypes, counts and label range; DataError naming the file at fault."""
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        images_path, labels_path = paths[f"{split}_images"], paths[f"{split}_labels"]
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DataError(
                f"{images_path}: expected uint8 images of shape (N, H, W), "
                f"got {images.dtype} of shape {images.shape}"
            )
        if labels.ndim != 1 or labels.dtype != np.uint8:
            raise DataError(
                f"{labels_path}: expected uint8 labels of shape (N,), "
                f"got {labels.dtype} of shape {labels.shape}"
            )
        if len(images) != len(labels):
            raise DataError(
                f"{labels_path}: {len(labels)} labels but {images_path} holds {len(images)} images"
            )
        if labels.max() >= len(info.classes):
            bad = int(np.argmax(labels >= len(info.classes)))
            raise DataError(
                f"{labels_path}: label {labels[bad]} at index {bad} is not a class "
                f"(expected 0 to {len(info.classes) - 1})"
            )
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise DataError(
            f"{paths['test_images']}: test images are {arrays['test_images'].shape[1:]} pixels "
            f"but training images are {arrays['train_images'].shape[1:]}"
        )


def download_files(file_names, base_urls, dest_dir, sha256=None, timeout=DOWNLOAD_TIMEOUT_S):
    """Download ``<base_url><file name>.gz`` for each file into ``dest_dir``, trying each mirror.

    Each file is streamed into a temporary file in ``dest_dir``, checked (it
    must be a valid IDX file; and, if ``sha256`` is given, its decompressed
    content must have that digest), and only then renamed into place, so the
    cache never holds a partial or wrong file. A file that is already present
    (raw or .gz) is not downloaded again.

    Parameters
    ----------
    file_names : iterable of str
        Decompressed file names, e.g. ``"train-images-idx3-ubyte"``.
    base_urls : sequence of str
        Mirrors, tried in order; ``http(s)://`` or ``file://``.
    dest_dir : str or os.PathLike
        Created if missing.
    sha256 : dict[str, str], optional
        File name -> expected hex SHA-256 of the decompressed content.
    timeout : float
        Seconds to wait on each connection or read.

    Returns
    -------
    list[pathlib.Path]
        The path of each file in ``dest_dir``, in the order given.

    Raises
    ------
    DataError
        If ``dest_dir`` cannot be created, or a file could not be fetched
        from any mirror (the message lists each URL tried and why it failed).
    """
    dest_dir = Path(dest_dir)
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{dest_dir}: cannot create download directory ({e.strerror or e})") from None
    if not base_urls:
        raise DataError(f"{dest_dir}: no download mirrors to try")

    results = []
    for file_name in file_names:
        present = [p for p in (dest_dir / file_name, dest_dir / f"{file_name}.gz") if p.is_file()]
        if present:
            results.append(present[0])
            continue
        destination = dest_dir / f"{file_name}.gz"
        expected = None if sha256 is None else sha256[file_name]
        failures = []
        for base_url in base_urls:
            url = base_url.rstrip("/") + f"/{file_name}.gz"
            try:
                _download_one(url, destination, expected, timeout)
                break
            except (OSError, ValueError, DataError) as e:
                # OSError covers URLError, HTTPError and timeouts; ValueError a malformed URL.
                failures.append(f"{url}: {e}")
        else:
            raise DataError(f"{destination}: could not download from any mirror ({'; '.join(failures)})")
        results.append(destination)
    return results


def _download_one(url, destination, expected_sha256, timeout):
    """Fetch ``url`` into ``destination`` atomically, after checking the content."""
    with urllib.request.urlopen(url, timeout=timeout) as response, atomic_write(destination) as f:
        received = 0
        while chunk := response.read(1 << 20):
            received += len(chunk)
            # A compressed file over the payload cap cannot be a valid dataset file.
            if received > MAX_PAYLOAD_BYTES:
                raise DataError(f"more than {MAX_PAYLOAD_BYTES} bytes, not a dataset file")
            f.write(chunk)
        f.flush()
        f.seek(0)
        _, digest = read_idx_fileobj(f, "downloaded data")
        if expected_sha256 is not None and digest != expected_sha256:
            raise DataError(f"SHA-256 of decompressed content is {digest}, expected {expected_sha256}")
