"""Random shifts of training images: what moves where, the fill, reproducibility, the loader's hook."""

import numpy as np
import pytest

from npconv.data import DataLoader, random_shift


def shifted_by_loops(image, dy, dx, fill):
    """The readable version: out[i, j] = image[i - dy, j - dx] where that pixel exists, else fill."""
    h, w = image.shape
    out = np.full_like(image, fill)
    for i in range(h):
        for j in range(w):
            if 0 <= i - dy < h and 0 <= j - dx < w:
                out[i, j] = image[i - dy, j - dx]
    return out


@pytest.mark.parametrize("max_shift", [1, 2, 4])
def test_each_image_moves_by_its_own_offset_and_the_background_fills_in(rng, max_shift):
    x = rng.standard_normal((64, 2, 7, 6)).astype(np.float32)
    out = random_shift(x, max_shift, -0.42, np.random.default_rng(3))
    offsets = np.random.default_rng(3).integers(-max_shift, max_shift + 1, size=(64, 2))  # the same draw
    assert out.shape == x.shape and out.dtype == x.dtype
    for n, (dy, dx) in enumerate(offsets):
        for c in range(2):
            np.testing.assert_array_equal(out[n, c], shifted_by_loops(x[n, c], dy, dx, np.float32(-0.42)),
                                          err_msg=f"image {n} channel {c}, shift ({dy}, {dx})")
    assert len({(dy, dx) for dy, dx in offsets}) > 1, "offsets differ between images"


def test_no_shift_draws_nothing_and_returns_the_batch(rng):
    x = rng.standard_normal((4, 1, 5, 5))
    gen = np.random.default_rng(0)
    before = gen.bit_generator.state
    assert random_shift(x, 0, 0.0, gen) is x and gen.bit_generator.state == before


def test_the_loader_shifts_each_batch_after_the_shuffle_reproducibly(rng):
    x, y = rng.standard_normal((50, 1, 6, 6)).astype(np.float32), np.arange(50)

    def epochs(seed):
        loader = DataLoader(x, y, 16, shuffle=True, rng=np.random.default_rng(seed),
                            augment=lambda xb, r: random_shift(xb, 2, 0.0, r))
        return [(xb.copy(), yb.copy()) for _ in range(2) for xb, yb in loader]

    first, again = epochs(1), epochs(1)
    for (xa, ya), (xb, yb) in zip(first, again):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    plain = [yb for _ in range(2) for _, yb in DataLoader(x, y, 16, shuffle=True, rng=np.random.default_rng(1))]
    assert [yb.tolist() for _, yb in first[:4]] == [yb.tolist() for yb in plain[:4]], \
        "the first epoch's order is the plain loader's: the shifts are drawn after the shuffle"
    assert not all(np.array_equal(xb, x[yb]) for xb, yb in first), "the images were shifted"


def test_a_shifted_batch_has_the_ordinary_strides():
    """Even for one channel (whose stride NumPy ignores): PyTorch would read transposed strides as channels-last."""
    x = np.zeros((5, 1, 6, 7), np.float32)
    out = random_shift(x, 1, 0.0, np.random.default_rng(0))
    assert out.strides == np.empty((5, 1, 6, 7), np.float32).strides
