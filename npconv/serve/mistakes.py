"""The Mistakes view: a model's test-set answers, the confusion matrix and the images behind each of its cells.

A model is run once over its dataset's test set (10,000 images for MNIST);
the class probabilities of every image are kept,
so that a cell of the confusion matrix -- true class t, predicted class p --
can list its images with what the model thought of them:

* off the diagonal (mistakes), the **most confidently wrong first**: by the
  probability the model gave its wrong answer, highest first;
* on the diagonal (right answers), the **closest calls first**: by the
  probability of the right answer, lowest first.
"""

import functools
from dataclasses import dataclass

import numpy as np

from ..inference import confusion_matrix

#: Test images per forward pass (bounds the memory of the logits and probabilities in flight).
CHUNK = 500


@dataclass
class Answers:
    """A model's answers on a test set: ``probabilities`` (N, K) float32, the true ``labels`` (N,) and the
    ``images`` (N, 28, 28) uint8."""

    dataset: str
    classes: list
    images: np.ndarray
    labels: np.ndarray
    probabilities: np.ndarray

    @functools.cached_property
    def predictions(self):
        return self.probabilities.argmax(axis=1)

    @property
    def accuracy(self):
        return float((self.predictions == self.labels).mean())

    def matrix(self):
        """The confusion matrix: ``m[t, p]`` = how many images of true class t were predicted as p."""
        return confusion_matrix(self.labels, self.predictions, len(self.classes))

    def cell(self, true, predicted):
        """Indices of the test images of class ``true`` predicted as ``predicted``, in the order of the module
        docstring."""
        index = np.flatnonzero((self.labels == true) & (self.predictions == predicted))
        confidence = self.probabilities[index, predicted]
        order = np.argsort(confidence if true == predicted else -confidence, kind="stable")
        return index[order]


def answer_test_set(classifier, dataset):
    """Run ``classifier`` (a :class:`~npconv.inference.Classifier`) over the test set of ``dataset``
    (a :class:`npconv.data.Dataset`)."""
    images = dataset.test_images
    chunks = []
    for start in range(0, len(images), CHUNK):
        chunks.append(classifier.probabilities(images[start : start + CHUNK]).astype(np.float32))
    classes = list(classifier.config.get("classes") or dataset.classes)
    return Answers(dataset.name, classes, images, np.asarray(dataset.test_labels, dtype=np.int64),
                          np.concatenate(chunks))
