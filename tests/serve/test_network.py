"""One image through a model, layer by layer; the test set's answers and the confusion matrix's cells."""

import types

import numpy as np
import pytest
from .webclient import on_paper

from npconv import models, nn
from npconv.data.images import preprocess
from npconv.inference import confusion_matrix
from npconv.serve.mistakes import Answers, answer_test_set
from npconv.serve.network import architecture, classify, first_filters, layer_outputs, model_input

CONFIG = {"dtype": "float32", "normalize_mean": 0.1307, "normalize_std": 0.3081, "dataset": "mnist", "num_classes": 10}


@pytest.fixture
def cnn(rng):
    model = models.cnn(rng=rng).eval()
    last = model[len(model) - 1]
    last.weight.data[...] = 0.1 * rng.standard_normal(last.weight.data.shape)  # not the zero start: distinct logits
    return model


def test_layer_by_layer_is_the_models_own_forward_pass(cnn, mnist):
    x = model_input(mnist.test_images[:3], CONFIG)
    outputs = layer_outputs(cnn, x)
    with nn.no_grad():
        expected = cnn(x)
    # Sequential runs ReLU after max-pool; they commute exactly, so the logits are the same to the last bit.
    np.testing.assert_array_equal(outputs[-1], expected)
    assert [o.shape[1:] for o in outputs] == [(8, 28, 28), (8, 28, 28), (8, 14, 14), (16, 14, 14), (16, 14, 14),
                                              (16, 7, 7), (784,), (128,), (128,), (10,)]


def test_classify_gives_probabilities_input_and_every_layer(cnn, mnist):
    image = on_paper(mnist.test_images[0])
    answer = classify(cnn, CONFIG, image, activations=True)
    np.testing.assert_array_equal(answer.image, preprocess(image))
    assert answer.probabilities.shape == (10,) and answer.probabilities.sum() == pytest.approx(1)
    assert answer.prediction == int(np.argmax(answer.layers[-1].values))
    assert [layer.kind for layer in answer.layers] == ["maps"] * 6 + ["vector"] * 4
    assert answer.layers[0].description.startswith("Conv2d(1, 8") and answer.layers[0].values.dtype == np.float32
    assert classify(cnn, CONFIG, image).layers is None


def test_fashion_models_fit_the_whole_image(cnn, mnist):
    image = on_paper(mnist.test_images[0])
    fashion = classify(cnn, {**CONFIG, "dataset": "fashion-mnist"}, image)
    np.testing.assert_array_equal(fashion.image, preprocess(image, fit=28))


def test_not_sure_below_even_odds(cnn, mnist):
    answer = classify(cnn, CONFIG, on_paper(mnist.test_images[0]))
    assert answer.not_sure == (answer.probabilities.max() < 0.5)
    sure = type(answer)(answer.image, np.array([0.02] * 9 + [0.82]))
    unsure = type(answer)(answer.image, np.array([0.06] * 9 + [0.46]))
    assert not sure.not_sure and unsure.not_sure and unsure.prediction == 9


def test_architecture_and_filters(cnn, rng):
    rows = architecture(cnn, CONFIG)
    assert [r["type"] for r in rows] == ["Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d", "Flatten",
                                         "Linear", "ReLU", "Linear"]
    assert sum(r["parameters"] for r in rows) == sum(p.data.size for p in cnn.parameters())
    index, weights = first_filters(cnn)
    assert index == 0 and weights.shape == (8, 1, 3, 3)
    mlp = models.mlp(dropout=0.2, rng=rng).eval()
    assert first_filters(mlp) is None
    assert [r["output_shape"] for r in architecture(mlp, CONFIG)] == [[784], [784], [128], [128], [128], [10]]


def test_test_set_answers_and_cells(cnn, mnist):
    data = types.SimpleNamespace(name="mnist", classes=[str(k) for k in range(10)],
                                 test_images=mnist.test_images[:1200], test_labels=mnist.test_labels[:1200])
    answers = answer_test_set(cnn, CONFIG, data)
    with nn.no_grad():
        logits = cnn(model_input(data.test_images, CONFIG))
    np.testing.assert_array_equal(answers.predictions, logits.argmax(axis=1))
    np.testing.assert_allclose(answers.probabilities.sum(axis=1), 1, rtol=1e-5)
    assert np.array_equal(answers.matrix(), confusion_matrix(data.test_labels, answers.predictions, 10))


def test_cells_list_the_most_confidently_wrong_first():
    probabilities = np.array([[0.1, 0.9], [0.3, 0.7], [0.8, 0.2], [0.6, 0.4], [0.45, 0.55], [0.99, 0.01]])
    answers = Answers("toy", ["a", "b"], np.zeros((6, 28, 28), np.uint8), np.array([0, 0, 0, 0, 1, 1]),
                             probabilities)
    assert answers.cell(0, 1).tolist() == [0, 1]   # true a, said b: p(b) 0.9 before 0.7
    assert answers.cell(0, 0).tolist() == [3, 2]   # right answers: the closest call (0.6) first
    assert answers.cell(1, 0).tolist() == [5] and answers.cell(1, 1).tolist() == [4]
    assert answers.accuracy == pytest.approx(3 / 6)
