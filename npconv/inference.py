"""Using a trained model: classify image files, evaluate a model file on a test set.

Each image is first made the way the training images were made
(:func:`npconv.data.images.preprocess`: ink, crop, fit, centre by mass), then
gets the same [0, 1] scaling and normalization the model was trained with.
"""

from dataclasses import dataclass

import numpy as np

from . import data, nn
from .data import to_float
from .data.images import DIGIT_BOX, SIZE, preprocess
from .errors import NpconvError
from .nn.loss import softmax
from .train.loop import evaluate
from .train.modelfile import load_model
from .train.parallel import DataParallel

#: A prediction whose top probability is below this is flagged "not sure": the model gives its own first
#: choice less than even odds, so it is more likely wrong than right about it.
LOW_CONFIDENCE = 0.5

def fit_for(config):
    """The box an image's content is fitted into: 20 for digits (MNIST), the whole 28 for Fashion-MNIST."""
    return SIZE if config.get("dataset") == "fashion-mnist" else DIGIT_BOX


def predict_images(model, config, paths):
    """Class probabilities for each image: returns an array of shape (len(paths), K)."""
    images = np.stack([preprocess(p, fit_for(config)) for p in paths])
    x = to_float(images, config.get("normalize_mean"), config.get("normalize_std"), np.dtype(config["dtype"]))
    model.eval()
    return softmax(model(x))


def confusion_matrix(labels, predictions, num_classes):
    """``m[t, p]`` = how many images of true class t were predicted as p."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (labels, predictions), 1)
    return m


@dataclass
class Evaluation:
    """A model file evaluated on a test set: loss, accuracy, every prediction and the true labels."""

    dataset: str
    loss: float
    accuracy: float
    predictions: np.ndarray
    labels: np.ndarray
    num_classes: int


def evaluate_model_file(path, dataset=None, data_dir=None, batch_size=1000):
    """Load the model file at ``path`` and evaluate it on a test set (default: the dataset it was trained on)."""
    model, config = load_model(path)
    loaded = data.load_dataset(dataset or config.get("dataset", "mnist"), data_dir)
    if len(loaded.classes) != config["num_classes"]:
        raise NpconvError(f"{path}: the model has {config['num_classes']} classes, the data {len(loaded.classes)}")
    x = to_float(loaded.test_images, config.get("normalize_mean"), config.get("normalize_std"),
                 np.dtype(config["dtype"]))
    loss, acc, predictions = evaluate(DataParallel(model), nn.SoftmaxCrossEntropyLoss(), x, loaded.test_labels,
                                      batch_size)
    return Evaluation(loaded.name, loss, acc, predictions, loaded.test_labels, config["num_classes"])
