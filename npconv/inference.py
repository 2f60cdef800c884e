"""Using a trained model: classify image files, evaluate a model file on a test set.

Each image is made to look like an MNIST digit: converted to grayscale,
resized to 28x28, and inverted when its background is light (MNIST digits are
white on black). Then it gets the same [0, 1] scaling and normalization the
model was trained with.
"""

import os
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from . import data, nn
from .data import to_float
from .errors import NpconvError
from .nn.loss import softmax
from .train.loop import evaluate
from .train.modelfile import load_model
from .train.parallel import DataParallel

MAX_PIXELS = 50_000_000  # refuse absurdly large images before decoding them


def load_image(path, size=28):
    """Read an image file as a (size, size) uint8 array, light-on-dark like MNIST."""
    if os.path.isdir(path):
        raise NpconvError(f"{path}: is a directory, not an image")
    if not os.path.isfile(path):
        raise NpconvError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise NpconvError(f"{path}: empty file, not an image")
    too_large = f"{path}: image too large (more than {MAX_PIXELS} pixels); refused before decoding it"
    try:
        # Image.open reads only the header. PIL warns (DecompressionBombWarning)
        # or raises (DecompressionBombError) for huge sizes; either is our error.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise NpconvError(f"{path}: image of {img.width}x{img.height} pixels is too large "
                                      f"(at most {MAX_PIXELS} pixels); refused before decoding it")
                gray = img.convert("L").resize((size, size), Image.Resampling.LANCZOS)
                pixels = np.asarray(gray, dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise NpconvError(too_large) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
        # PIL raises OSError for truncated data, SyntaxError from some format parsers.
        raise NpconvError(f"{path}: not a readable image ({' '.join(str(e).split())})") from None
    # The border is background: if it is mostly light, the digit is dark on light.
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    if border.mean() > 127:
        pixels = 255 - pixels
    return pixels


def predict_images(model, config, paths):
    """Class probabilities for each image: returns an array of shape (len(paths), K)."""
    images = np.stack([load_image(p) for p in paths])
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
