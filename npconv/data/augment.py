"""Data augmentation: random shifts of training images."""

from .. import backend as B


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
    xp = B.xp  # the batch may live on a device: the offsets are drawn on the host and sent there
    n, c, h, w = x.shape
    s = max_shift
    # Pad by s on every side with the background; image n's shifted frame is then the
    # H x W window whose corner is at (s - dy_n, s - dx_n) of its padded image.
    padded = xp.full((n, c, h + 2 * s, w + 2 * s), fill, dtype=x.dtype)
    padded[:, :, s : s + h, s : s + w] = x
    offsets = B.to_device(rng.integers(-s, s + 1, size=(n, 2)))
    rows = (s - offsets[:, :1]) + xp.arange(h)  # (N, H): the padded rows of each shifted image
    cols = (s - offsets[:, 1:]) + xp.arange(w)  # (N, W)
    # Gather: out[n, :, i, j] = padded[n, :, rows[n, i], cols[n, j]] (the advanced indices go first).
    out = padded[xp.arange(n)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    # Into an array with the ordinary (N, C, H, W) strides: for one channel ascontiguousarray would keep the
    # transposed ones (the channel axis has one entry), and PyTorch reads those as its channels-last layout.
    shifted = xp.empty((n, c, h, w), dtype=x.dtype)
    shifted[...] = out.transpose(0, 3, 1, 2)
    return shifted
