"""One image through a model, layer by layer; the test set's answers and the confusion matrix's cells."""

import threading
import types

import numpy as np
import pytest
from .webclient import on_paper

from npconv import engine, models, nn
from npconv.data.images import preprocess
from npconv.inference import Classifier, Prediction, confusion_matrix, model_input
from npconv.serve.mistakes import Answers, answer_test_set
from npconv.serve.network import architecture, classify, first_filters, layer_outputs

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
        expected = engine.compile(cnn)(x)
    # The engine runs ReLU after max-pool; they commute exactly, so the logits are the same to the last bit.
    np.testing.assert_array_equal(outputs[-1], expected)
    assert [o.shape[1:] for o in outputs] == [(8, 28, 28), (8, 28, 28), (8, 14, 14), (16, 14, 14), (16, 14, 14),
                                              (16, 7, 7), (784,), (128,), (128,), (10,)]


def test_classify_gives_probabilities_input_and_every_layer(cnn, mnist):
    image = on_paper(mnist.test_images[0])
    classifier = Classifier.from_model(cnn, CONFIG)
    answer = classify(classifier, image, activations=True)
    np.testing.assert_array_equal(answer.image, preprocess(image))
    probabilities = list(answer.prediction.probabilities.values())
    assert len(probabilities) == 10 and sum(probabilities) == pytest.approx(1)
    assert answer.prediction.index == int(np.argmax(answer.layers[-1].values))
    assert [layer.kind for layer in answer.layers] == ["maps"] * 6 + ["vector"] * 4
    assert answer.layers[0].description.startswith("Conv2d(1, 8") and answer.layers[0].values.dtype == np.float32
    plain = classify(classifier, image)
    assert plain.layers is None
    # With or without the layers' view, the answer is the one npconv predict gives (the same Classifier).
    (predicted,) = classifier.classify([image])
    np.testing.assert_allclose(list(plain.prediction.probabilities.values()),
                               list(predicted.probabilities.values()), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(probabilities, list(predicted.probabilities.values()), rtol=1e-6, atol=1e-7)
    assert answer.prediction.label == plain.prediction.label == predicted.label


@pytest.mark.parametrize("activations", [True, False])
def test_requests_classify_at_the_same_time_without_a_lock(cnn, mnist, activations):
    """Eight threads classify with one model at once (as the server's requests do): each gets the answer it gets
    alone. no_grad() holds per thread and a forward under it keeps nothing on the model, so nothing is shared."""
    images = [on_paper(mnist.test_images[i]) for i in range(8)]
    classifier = Classifier.from_model(cnn, CONFIG)
    alone = [classify(classifier, image, activations=activations) for image in images]
    together = [None] * len(images)
    start = threading.Barrier(len(images))

    def request(i):
        start.wait()
        for _ in range(3):
            together[i] = classify(classifier, images[i], activations=activations)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (a, b) in enumerate(zip(alone, together)):
        np.testing.assert_array_equal(b.prediction.probabilities, a.prediction.probabilities,
                                      err_msg=f"image {i}: together / alone")
        for la, lb in zip(a.layers or [], b.layers or []):
            np.testing.assert_array_equal(lb.values, la.values, err_msg=f"image {i}, {la.description}")


def test_fashion_models_fit_the_whole_image(cnn, mnist):
    image = on_paper(mnist.test_images[0])
    fashion = classify(Classifier.from_model(cnn, {**CONFIG, "dataset": "fashion-mnist"}), image)
    np.testing.assert_array_equal(fashion.image, preprocess(image, fit=28))


def test_not_sure_below_even_odds(cnn, mnist):
    answer = classify(Classifier.from_model(cnn, CONFIG), on_paper(mnist.test_images[0])).prediction
    assert answer.not_sure == (answer.probability < 0.5)
    classes = [str(k) for k in range(10)]
    sure = Prediction.of("a", np.array([0.02] * 9 + [0.82]), classes)
    unsure = Prediction.of("b", np.array([0.06] * 9 + [0.46]), classes)
    assert not sure.not_sure and unsure.not_sure and unsure.index == 9 and unsure.label == "9"


def test_architecture_and_filters(cnn, rng):
    rows = architecture(Classifier.from_model(cnn, CONFIG))
    assert [r["type"] for r in rows] == ["Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d", "Flatten",
                                         "Linear", "ReLU", "Linear"]
    assert sum(r["parameters"] for r in rows) == sum(p.data.size for p in cnn.parameters())
    index, weights = first_filters(cnn)
    assert index == 0 and weights.shape == (8, 1, 3, 3)
    mlp = models.mlp(dropout=0.2, rng=rng).eval()
    assert first_filters(mlp) is None
    assert [r["output_shape"] for r in architecture(Classifier.from_model(mlp, CONFIG))] == [[784], [784], [128], [128], [128], [10]]


def test_test_set_answers_and_cells(cnn, mnist):
    data = types.SimpleNamespace(name="mnist", classes=[str(k) for k in range(10)],
                                 test_images=mnist.test_images[:1200], test_labels=mnist.test_labels[:1200])
    answers = answer_test_set(Classifier.from_model(cnn, CONFIG), data)
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
