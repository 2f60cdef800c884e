"""From uint8 images to float batches: scaling, splitting, subsetting, minibatches.

Everything random here takes a ``numpy.random.Generator`` argument and draws
only from it, so one seed reproduces a whole run and nothing touches NumPy's
global random state. Data preparation is host-side, so this module uses NumPy
directly rather than :data:`npconv.backend.xp`.
"""

import math

import numpy as np

from .. import backend as B
from ..backend import resolve_dtype

# Pixels per np.bincount call in pixel_stats.
_STATS_CHUNK = 1 << 20


def to_float(images, mean=None, std=None, dtype=np.float32):
    r"""Scale uint8 images to [0, 1], optionally standardize, and add a channel axis.

    .. math:: x = (\text{images} / 255 - \text{mean}) / \text{std}

    where a missing ``mean`` counts as 0 and a missing ``std`` as 1.

    Parameters
    ----------
    images : numpy.ndarray
        uint8, shape (N, H, W) or (N, C, H, W).
    mean, std : float, optional
        Statistics of the pixels after scaling to [0, 1], e.g. from
        :func:`pixel_stats` on the training set (MNIST: 0.1307, 0.3081).
        Use the training set's values for validation and test data too.
    dtype : numpy dtype
        float32 (default) or float64.

    Returns
    -------
    numpy.ndarray
        ``dtype``, shape (N, 1, H, W) for 3-D input, (N, C, H, W) for 4-D;
        a new array.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        # Refusing floats catches scaling twice, which silently ruins training.
        raise ValueError(f"to_float expects uint8 images, got {images.dtype}")
    if images.ndim == 3:
        images = images[:, np.newaxis, :, :]
    elif images.ndim != 4:
        raise ValueError(f"to_float expects images of shape (N, H, W) or (N, C, H, W), got {images.shape}")
    if std is not None and not std > 0:
        raise ValueError(f"std must be positive, got {std}")

    x = images.astype(resolve_dtype(dtype))
    x /= 255
    if mean is not None:
        x -= mean
    if std is not None:
        x /= std
    return x


def pixel_stats(images):
    r"""Mean and standard deviation of all pixels, scaled to [0, 1].

    Computed exactly from a 256-bin histogram of the uint8 values, so no
    float copy of the images is made (MNIST's training set would need 376 MB
    in float64):

    .. math:: \mu = \sum_v c_v \, v / n, \qquad
              \sigma^2 = \sum_v c_v \, (v - \mu)^2 / n

    over pixel values ``v = k / 255`` with counts ``c_v``. The standard
    deviation is the population one (ddof=0).

    Parameters
    ----------
    images : numpy.ndarray
        uint8, any shape.

    Returns
    -------
    mean, std : float
        Of ``images / 255``. MNIST's training set gives 0.1307, 0.3081.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"pixel_stats expects uint8 images, got {images.dtype}")
    if images.size == 0:
        raise ValueError("pixel_stats needs at least one pixel")
    pixels = images.ravel()
    counts = np.zeros(256, dtype=np.int64)
    # bincount converts its input to int64; in chunks that copy stays small (one call on all of MNIST
    # makes a 376 MB temporary, and is slower: docs/performance.md).
    for start in range(0, pixels.size, _STATS_CHUNK):
        counts += np.bincount(pixels[start : start + _STATS_CHUNK], minlength=256)
    counts = counts.astype(np.float64)
    values = np.arange(256, dtype=np.float64) / 255
    total = counts.sum()
    mean = float(counts @ values / total)
    variance = float(counts @ (values - mean) ** 2 / total)
    return mean, math.sqrt(variance)


def train_val_split(images, labels, val_fraction, rng):
    """Split off a random validation set.

    Parameters
    ----------
    images : numpy.ndarray
        Shape (N, ...).
    labels : numpy.ndarray
        Shape (N,).
    val_fraction : float
        Share of the samples for validation, ``0 <= val_fraction < 1``;
        ``round(val_fraction * N)`` samples go to validation.
    rng : numpy.random.Generator
        Source of the random permutation.

    Returns
    -------
    train_x, train_y, val_x, val_y : numpy.ndarray
        New arrays with shapes (N - N_val, ...), (N - N_val,), (N_val, ...),
        (N_val,). Each part keeps the original order of its samples.
    """
    n = _check_pair(images, labels)
    _check_rng(rng)
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = round(val_fraction * n)
    if n_val >= n:
        raise ValueError(f"val_fraction {val_fraction} of {n} samples leaves no training samples")

    order = rng.permutation(n)
    # Sorting keeps each part in the original order; which samples land
    # where is still random, and contiguous reads are faster.
    val_idx = np.sort(order[:n_val])
    train_idx = np.sort(order[n_val:])
    return images[train_idx], labels[train_idx], images[val_idx], labels[val_idx]


def random_subset(images, labels, n, rng):
    """``n`` samples drawn without replacement, for quick experiments.

    Parameters
    ----------
    images : numpy.ndarray
        Shape (N, ...).
    labels : numpy.ndarray
        Shape (N,).
    n : int
        How many samples, ``1 <= n <= N``.
    rng : numpy.random.Generator
        Source of the random choice.

    Returns
    -------
    images, labels : numpy.ndarray
        New arrays of shapes (n, ...) and (n,), in the original order.
    """
    total = _check_pair(images, labels)
    _check_rng(rng)
    if not 1 <= n <= total:
        raise ValueError(f"subset size must be between 1 and {total}, got {n}")
    idx = np.sort(rng.choice(total, size=n, replace=False))
    return images[idx], labels[idx]


def iterate_minibatches(x, y, batch_size, shuffle=False, rng=None):
    """Yield ``(xb, yb)`` minibatches covering every sample exactly once.

    With ``shuffle`` a fresh permutation is drawn from ``rng`` each time the
    iteration starts, so every epoch sees a different order, and the whole
    sequence of epochs is reproducible from the generator's seed.

    Parameters
    ----------
    x : numpy.ndarray
        Shape (N, ...).
    y : numpy.ndarray
        Shape (N,).
    batch_size : int
        Samples per batch; the last batch holds the remaining
        ``N - (ceil(N / batch_size) - 1) * batch_size`` samples.
    shuffle : bool
        Visit the samples in random order.
    rng : numpy.random.Generator, optional
        Required when ``shuffle`` is true.

    Yields
    ------
    xb : numpy.ndarray
        Shape (B, ...), same dtype as ``x``; B = batch_size except possibly
        in the last batch. A copy when shuffling, else a view of ``x``.
    yb : numpy.ndarray
        Shape (B,), likewise.
    """
    n = _check_pair(x, y)
    _check_batch_size(batch_size)
    if shuffle:
        _check_rng(rng)
    return _batches(x, y, n, batch_size, shuffle, rng)


def _batches(x, y, n, batch_size, shuffle, rng, augment=None):
    # A separate generator function, so that the argument checks above run
    # at the call rather than at the first next().
    order = rng.permutation(n) if shuffle else None
    if order is not None and not isinstance(x, np.ndarray):
        order = B.to_device(order)  # data on a device: gather the batches there (one small upload an epoch)
    for start in range(0, n, batch_size):
        if order is None:
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        else:
            idx = order[start : start + batch_size]
            xb, yb = x[idx], y[idx]
        yield (xb if augment is None else augment(xb, rng)), yb


class DataLoader:
    """Minibatches over ``(x, y)``, re-iterable once per epoch.

    ``for xb, yb in loader`` runs one epoch (see :func:`iterate_minibatches`);
    with ``shuffle`` each epoch draws a new order from ``rng``.

    Parameters
    ----------
    x : numpy.ndarray
        Shape (N, ...), e.g. float32 images (N, 1, H, W) from :func:`to_float`.
    y : numpy.ndarray
        Shape (N,), labels.
    batch_size : int
        Samples per batch; the last batch may be smaller.
    shuffle : bool
        New random order each epoch.
    rng : numpy.random.Generator, optional
        Required when ``shuffle`` is true, or with ``augment``.
    augment : callable, optional
        ``augment(xb, rng) -> xb``, applied to each batch after it is drawn
        (e.g. :func:`npconv.data.augment.random_shift`), drawing from ``rng``
        after the epoch's shuffle: the epochs stay reproducible from the seed.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> loader = DataLoader(np.zeros((10, 1, 28, 28)), np.zeros(10), batch_size=4, shuffle=True, rng=rng)
    >>> len(loader), [len(yb) for _, yb in loader]
    (3, [4, 4, 2])
    """

    def __init__(self, x, y, batch_size, shuffle=False, rng=None, augment=None):
        self.num_samples = _check_pair(x, y)
        _check_batch_size(batch_size)
        if shuffle or augment is not None:
            _check_rng(rng)
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.rng = rng
        self.augment = augment

    def __len__(self):
        """Number of batches per epoch, ``ceil(N / batch_size)``."""
        return math.ceil(self.num_samples / self.batch_size)

    def __iter__(self):
        return _batches(self.x, self.y, self.num_samples, self.batch_size, self.shuffle, self.rng, self.augment)


def _check_pair(x, y):
    """Check that ``x`` and ``y`` hold the same number of samples; return it."""
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    return len(x)


def _check_batch_size(batch_size):
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def _check_rng(rng):
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng must be a numpy.random.Generator (e.g. np.random.default_rng(seed)), got {type(rng).__name__}"
        )
