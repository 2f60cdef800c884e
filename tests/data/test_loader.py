"""Tests for npconv.data.loader: scaling, statistics, splits, subsets and minibatches."""

import numpy as np
import pytest

from npconv.data import DataLoader, iterate_minibatches, pixel_stats, random_subset, to_float, train_val_split


def numbered_samples(n, shape=(2, 3)):
    """Images whose every pixel equals the sample index (mod 256), and labels = index.

    Lets a test check that images and labels stay paired after any reordering.
    """
    images = np.broadcast_to((np.arange(n) % 256).astype(np.uint8)[:, None, None], (n, *shape)).copy()
    return images, np.arange(n)


def assert_paired(images, labels):
    np.testing.assert_array_equal(images[:, 0, 0], (labels % 256).astype(np.uint8), "images and labels unpaired")


# --- to_float and pixel_stats -----------------------------------------------------------------


def test_to_float_scales_and_adds_channel_axis():
    images = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)
    x = to_float(images)
    assert x.shape == (1, 1, 2, 2) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], [[0.0, 1.0], [0.2, 0.4]], rtol=1e-6)


def test_to_float_standardizes():
    images = np.array([[[0, 255]]], dtype=np.uint8)
    x = to_float(images, mean=0.5, std=0.25, dtype=np.float64)
    assert x.dtype == np.float64
    np.testing.assert_allclose(x[0, 0, 0], [-2.0, 2.0])


def test_to_float_keeps_channels_of_4d_input_and_copies():
    images = np.full((2, 3, 4, 5), 255, dtype=np.uint8)
    x = to_float(images)
    assert x.shape == (2, 3, 4, 5)
    x[...] = 0
    assert images.min() == 255, "input must not be modified"


@pytest.mark.parametrize(
    "images, kwargs, error",
    [
        (np.zeros((2, 3, 3), dtype=np.float32), {}, ValueError),  # already scaled?
        (np.zeros((3, 3), dtype=np.uint8), {}, ValueError),
        (np.zeros((2, 3, 3), dtype=np.uint8), {"std": 0.0}, ValueError),
        (np.zeros((2, 3, 3), dtype=np.uint8), {"dtype": np.float16}, ValueError),
    ],
)
def test_to_float_rejects(images, kwargs, error):
    with pytest.raises(error):
        to_float(images, **kwargs)


def test_pixel_stats_matches_numpy():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (300, 28, 28), dtype=np.uint8)  # over one bincount chunk
    mean, std = pixel_stats(images)
    scaled = images.astype(np.float64) / 255
    assert mean == pytest.approx(scaled.mean(), rel=1e-12)
    assert std == pytest.approx(scaled.std(), rel=1e-12)


def test_pixel_stats_rejects_floats():
    with pytest.raises(ValueError, match="uint8"):
        pixel_stats(np.zeros((2, 2), dtype=np.float32))


# --- train_val_split and random_subset --------------------------------------------------------


def test_train_val_split_partitions_the_samples():
    images, labels = numbered_samples(100)
    train_x, train_y, val_x, val_y = train_val_split(images, labels, 0.2, np.random.default_rng(0))
    assert train_x.shape == (80, 2, 3) and val_x.shape == (20, 2, 3)
    assert sorted(np.concatenate([train_y, val_y]).tolist()) == list(range(100)), "each sample in one part"
    assert_paired(train_x, train_y)
    assert_paired(val_x, val_y)
    assert np.all(np.diff(train_y) > 0) and np.all(np.diff(val_y) > 0), "original order kept"
    assert val_y.tolist() != list(range(80, 100)), "validation set is random, not the tail"


def test_train_val_split_is_reproducible_from_the_seed():
    images, labels = numbered_samples(50)
    a = train_val_split(images, labels, 0.3, np.random.default_rng(7))
    b = train_val_split(images, labels, 0.3, np.random.default_rng(7))
    c = train_val_split(images, labels, 0.3, np.random.default_rng(8))
    assert a[3].tolist() == b[3].tolist()
    assert a[3].tolist() != c[3].tolist()


def test_train_val_split_zero_fraction():
    images, labels = numbered_samples(10)
    train_x, train_y, val_x, val_y = train_val_split(images, labels, 0.0, np.random.default_rng(0))
    assert len(train_y) == 10 and val_x.shape == (0, 2, 3) and len(val_y) == 0


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 0.99])
def test_train_val_split_rejects_bad_fractions(fraction):
    images, labels = numbered_samples(10)
    with pytest.raises(ValueError):
        train_val_split(images, labels, fraction, np.random.default_rng(0))


def test_random_subset():
    images, labels = numbered_samples(100)
    sub_x, sub_y = random_subset(images, labels, 30, np.random.default_rng(0))
    assert sub_x.shape == (30, 2, 3)
    assert len(set(sub_y.tolist())) == 30, "no sample twice"
    assert_paired(sub_x, sub_y)
    again = random_subset(images, labels, 30, np.random.default_rng(0))[1]
    assert again.tolist() == sub_y.tolist()
    with pytest.raises(ValueError):
        random_subset(images, labels, 101, np.random.default_rng(0))


def test_randomness_needs_a_generator_and_leaves_global_state_alone():
    images, labels = numbered_samples(10)
    before = np.random.get_state()[1].copy()
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        random_subset(images, labels, 3, 0)
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        iterate_minibatches(images, labels, 4, True, None)
    train_val_split(images, labels, 0.5, np.random.default_rng(0))
    list(iterate_minibatches(images, labels, 4, True, np.random.default_rng(0)))
    np.testing.assert_array_equal(np.random.get_state()[1], before)


# --- minibatches ------------------------------------------------------------------------------


@pytest.mark.parametrize("n, batch_size", [(10, 3), (9, 3), (5, 10), (1, 1)])
@pytest.mark.parametrize("shuffle", [False, True])
def test_every_sample_exactly_once_per_epoch(n, batch_size, shuffle):
    images, labels = numbered_samples(n)
    batches = list(iterate_minibatches(images, labels, batch_size, shuffle, np.random.default_rng(0)))
    sizes = [len(yb) for _, yb in batches]
    assert sizes == [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else []), sizes
    seen = np.concatenate([yb for _, yb in batches])
    assert sorted(seen.tolist()) == list(range(n))
    for xb, yb in batches:
        assert_paired(xb, yb)
    if not shuffle:
        assert seen.tolist() == list(range(n)), "without shuffle the order is kept"


def test_shuffle_is_reproducible_and_differs_between_epochs():
    images, labels = numbered_samples(200)

    def epochs(seed, count=3):
        rng = np.random.default_rng(seed)
        return [np.concatenate([yb for _, yb in iterate_minibatches(images, labels, 32, True, rng)]).tolist()
                for _ in range(count)]

    first, again, other = epochs(0), epochs(0), epochs(1)
    assert first == again, "same seed, same sequence of epochs"
    assert first[0] != first[1] != first[2], "each epoch draws a fresh order"
    assert first != other
    assert first[0] != list(range(200))


def test_iterate_minibatches_checks_arguments_at_the_call():
    images, labels = numbered_samples(10)
    with pytest.raises(ValueError, match="10 samples but y has 9"):
        iterate_minibatches(images, labels[:9], 4)
    with pytest.raises(ValueError, match="batch_size"):
        iterate_minibatches(images, labels, 0)


def test_data_loader():
    images, labels = numbered_samples(10)
    loader = DataLoader(images, labels, batch_size=4, shuffle=True, rng=np.random.default_rng(0))
    assert len(loader) == 3
    epoch1 = [yb.tolist() for _, yb in loader]
    epoch2 = [yb.tolist() for _, yb in loader]
    assert [len(b) for b in epoch1] == [4, 4, 2]
    assert sorted(sum(epoch1, [])) == sorted(sum(epoch2, [])) == list(range(10))
    assert epoch1 != epoch2
    assert len(DataLoader(images, labels, batch_size=10)) == 1
    assert len(DataLoader(images, labels, batch_size=11)) == 1
    with pytest.raises(TypeError):
        DataLoader(images, labels, batch_size=4, shuffle=True)
