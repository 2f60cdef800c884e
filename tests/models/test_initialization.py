"""Initializing a built model as other codes do: Gaussian weights, an output layer like the others."""

import numpy as np

from npconv.models import cnn
from npconv.models.initialization import layers_with_weights, reinitialize


def test_gaussian_weights_have_the_asked_std_and_the_output_layer_stays_zero(rng):
    model = cnn(rng=np.random.default_rng(0))
    reinitialize(model, rng, std=0.1)
    layers = layers_with_weights(model)
    hidden = np.concatenate([layer.weight.data.ravel() for layer in layers[:-1]])
    assert abs(hidden.std() - 0.1) < 0.005 and abs(hidden.mean()) < 0.005, (hidden.mean(), hidden.std())
    assert not layers[-1].weight.data.any(), "zero_output keeps the classifier at zero"
    assert all(not layer.bias.data.any() for layer in layers), "biases stay zero"


def test_output_layer_like_the_others(rng):
    model = cnn(rng=np.random.default_rng(0))
    reinitialize(model, rng, zero_output=False)
    out = layers_with_weights(model)[-1].weight.data
    bound = np.sqrt(6.0 / out.shape[1])  # He-uniform for its fan-in of 128
    assert out.any() and np.abs(out).max() <= bound and np.abs(out).max() > 0.9 * bound, np.abs(out).max()


def test_gaussian_output_layer_when_not_zeroed(rng):
    model = cnn(rng=np.random.default_rng(0))
    reinitialize(model, rng, std=0.01, zero_output=False)
    out = layers_with_weights(model)[-1].weight.data
    assert abs(out.std() - 0.01) < 0.001, out.std()
