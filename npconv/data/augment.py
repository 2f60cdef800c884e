"""Data augmentation: random shifts of training images."""

import numpy as np


def random_shift(x, max_shift, fill, rng):
    """Shift every image of a batch by its own random offset of up to ``max_shift`` pixels along each axis.

    Image ``n`` moves by ``(dy_n, dx_n)``, each drawn uniformly from
    ``-max_shift .. max_shift``; what moves out of the frame is lost and what
    comes in is ``fill`` (the background: for standardized images the value of a
    black pixel, ``-mean / std``)::

        out[n, c, i, j] = x[n, c, i - dy_n, j - dx_n]   where that pixel exists, else fill

    Parameters
    ----------
    x : numpy.ndarray
        A batch of images (N, C, H, W).
    max_shift : int >= 0
    fill : float
    rng : numpy.random.Generator
        The offsets are ``rng.integers(-max_shift, max_shift + 1, size=(N, 2))``,
        one draw per batch.

    Returns
    -------
    numpy.ndarray
        A new (N, C, H, W) array of ``x``'s dtype.
    """
    if max_shift == 0:
        return x
    n, c, h, w = x.shape
    s = max_shift
    # Pad by s on every side with the background; image n's shifted frame is then the
    # H x W window whose corner is at (s - dy_n, s - dx_n) of its padded image.
    padded = np.full((n, c, h + 2 * s, w + 2 * s), fill, dtype=x.dtype)
    padded[:, :, s : s + h, s : s + w] = x
    offsets = rng.integers(-s, s + 1, size=(n, 2))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (h, w), axis=(2, 3))  # (N, C, 2s+1, 2s+1, H, W)
    return windows[np.arange(n), :, s - offsets[:, 0], s - offsets[:, 1]]  # (N, C, H, W), a copy
