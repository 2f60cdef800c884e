"""Using a trained model: classify images, evaluate a model file on a test set -- npconv's one prediction path.

Each image is first made the way the training images were made
(:func:`npconv.data.images.preprocess`: ink, crop, fit, centre by mass), then
gets the same pixel scaling the model was trained with (recorded in its model
file). In one call::

    import npconv
    for p in npconv.classify("runs/cnn-mnist-20261127-101500/model.npz", ["seven.png", "photo.jpg"]):
        print(p.image, p.label, f"{p.probability:.3f}", "not sure" if p.not_sure else "")

:class:`Classifier` loads the model once, for many calls (a server, a loop).
A prediction is flagged *not sure* when its top probability is below
:data:`LOW_CONFIDENCE`. ``npconv predict``, ``npconv evaluate``, ``npconv serve``
(which adds only its views of every layer, :mod:`npconv.serve.network`), the
tests and the benchmarks all predict through :class:`Classifier`.
"""

import glob
import os
import threading
from dataclasses import dataclass

import numpy as np

from . import backend as B
from . import data, nn
from .data import to_float
from .data.images import DIGIT_BOX, SIZE, ImageError, preprocess
from .engine import compile as compile_model
from .engine.plan import Plan, PlanError
from .errors import NpconvError
from .nn.loss import softmax
from .train.loop import evaluate
from .train.modelfile import load_model
from .train.runfolder import PLAN_FILE, model_file_of

#: A prediction whose top probability is below this is flagged "not sure": the model gives its own first
#: choice less than even odds, so it is more likely wrong than right about it.
LOW_CONFIDENCE = 0.5
#: Images classified per forward pass (bounds the memory of a folder of thousands of images).
BATCH = 1000
#: What a folder given to :func:`image_files` is searched for (lower-case extensions).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def fit_for(config):
    """The box an image's content is fitted into: 20 for digits (MNIST), the whole 28 for Fashion-MNIST."""
    return SIZE if config.get("dataset") == "fashion-mnist" else DIGIT_BOX


def model_input(images, config):
    """uint8 images (N, 28, 28) as the model's input (N, 1, 28, 28): scaled and normalized as in training."""
    return to_float(np.asarray(images), config.get("normalize_mean"), config.get("normalize_std"),
                    np.dtype(config["dtype"]))


def class_names(config):
    """The names of a model's classes (``"0"`` ... ``"9"`` for MNIST), from its model file's config."""
    return list(config.get("classes") or [str(i) for i in range(config["num_classes"])])


@dataclass
class Prediction:
    """What a model says about one image.

    Attributes
    ----------
    image : str -- the image's path (or the name it was given)
    index : int -- the predicted class's index
    label : str -- its name (``"7"``; ``"Sneaker"`` for Fashion-MNIST)
    probability : float -- its probability
    probabilities : dict -- every class name -> its probability, in class order
    """

    image: str
    index: int
    label: str
    probability: float
    probabilities: dict

    @property
    def not_sure(self):
        """The top probability is below :data:`LOW_CONFIDENCE`."""
        return self.probability < LOW_CONFIDENCE

    def top(self, k):
        """The ``k`` most likely classes as ``(label, probability)``, most likely first."""
        return sorted(self.probabilities.items(), key=lambda item: -item[1])[:k]

    @classmethod
    def of(cls, image, probabilities, classes):
        """The prediction for ``image`` (its name) from its class probabilities (K,), classes named by ``classes``."""
        k = int(np.argmax(probabilities))
        return cls(image, k, classes[k], float(probabilities[k]),
                   {c: float(v) for c, v in zip(classes, probabilities)})

    def to_json(self):
        return {"image": self.image, "class": self.label, "index": self.index, "probability": self.probability,
                "not_sure": self.not_sure, "probabilities": dict(self.probabilities)}


class Classifier:
    """A model file loaded once, to classify images as often as needed.

    Parameters
    ----------
    model_file : str or os.PathLike
        A ``model.npz`` written by ``npconv train`` (or :func:`npconv.save_model`), or the run folder that holds it.
    device : ``"cpu"`` (default) or ``"cuda"``
        Where the model computes (:mod:`npconv.backend`); results come back as host arrays.
    engine : ``"fast"`` (default) or ``"reference"``
        What computes it (:func:`npconv.engine.compile`): the engine, or the textbook layers alone. The
        fast engine runs with the plan of the run that wrote the model file (its ``plan.json``, beside
        ``model.npz``), so that the model gives the numbers the run's own evaluation gave, to the last
        bit; without one (a model file on its own), with the built-in plan.

    Raises :class:`~npconv.errors.ModelFileError` for a file that is not a usable model.

    Attributes
    ----------
    network : the model as its layers (an ``nn.Sequential`` in evaluation mode)
    model : the same model as the engine runs it (:func:`npconv.engine.compile`), one per thread
    config : dict -- its model file's config (dataset, classes, pixel scaling, dtype)
    plan : the engine's :class:`~npconv.engine.plan.Plan` from the run's ``plan.json``, or None (the built-in plan)
    classes : list of str -- the class names
    """

    def __init__(self, model_file, device="cpu", engine="fast"):
        path = model_file_of(model_file)
        with B.on_device(device):
            model, config = load_model(path)
        self._use(model, config, device, path, engine, recorded_plan(path) if device == "cpu" else None)

    @classmethod
    def from_model(cls, model, config, device="cpu", engine="fast"):
        """A classifier of a model already in memory (put in evaluation mode); ``config`` is what its model file
        would record (at least ``dtype`` and ``num_classes``; the pixel scaling and ``classes`` when not the
        defaults)."""
        classifier = cls.__new__(cls)
        classifier._use(model, config, device, None, engine)
        return classifier

    def _use(self, model, config, device, model_file, engine, plan=None):
        self.model_file = model_file
        self.plan = plan
        self.device = device
        self.config = config
        self.network = model.eval()
        self.engine = engine
        self.classes = class_names(config)
        self._threads = threading.local()

    @property
    def model(self):
        """The network as the engine runs it, compiled once per thread: a compiled network keeps the state of its
        last batch (chunks, timings), so threads that classify at once (a server's requests) each use their own."""
        net = getattr(self._threads, "net", None)
        if net is None:
            net = self._threads.net = compile_model(self.network, self.engine, self.plan)
        return net

    def inputs(self, images):
        """The network's input for uint8 28x28 images (N, 28, 28): scaled as in training, (N, 1, 28, 28)."""
        return model_input(images, self.config)

    def probabilities(self, images):
        """Class probabilities (N, K) of preprocessed uint8 images (N, 28, 28), in batches of :data:`BATCH`."""
        out = []
        with nn.no_grad(), B.on_device(self.device):
            for start in range(0, len(images), BATCH):
                x = B.to_device(self.inputs(images[start : start + BATCH]))
                out.append(B.to_numpy(softmax(self.model(x))))
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)))

    def preprocess(self, image, name=None):
        """One image (a path or the file's bytes) made like the training data: uint8 (28, 28)."""
        return preprocess(image, fit_for(self.config), name)

    def predictions(self, images, names):
        """A :class:`Prediction` per preprocessed image (N, 28, 28), named by ``names``."""
        return [Prediction.of(name, p, self.classes) for name, p in zip(names, self.probabilities(images))]

    def classify(self, images, names=None):
        """A :class:`Prediction` for each image (paths, or the files' bytes), in order.

        ``names`` name the images in the results and in errors (default: the
        paths; ``image 1``, ``image 2``, ... for bytes). Raises
        :class:`~npconv.data.images.ImageError` naming the first image that
        cannot be read.
        """
        images = list(images)
        if names is None:
            names = [os.fspath(im) if not isinstance(im, (bytes, bytearray, memoryview)) else f"image {i}"
                     for i, im in enumerate(images, start=1)]
        arrays = [self.preprocess(im, name) for im, name in zip(images, names)]
        return self.predictions(np.stack(arrays) if arrays else np.zeros((0, SIZE, SIZE), np.uint8), names)


def recorded_plan(model_file):
    """The engine's plan recorded by the run that wrote ``model_file`` (``plan.json`` beside it), or None: none
    recorded, or one that cannot be read (the built-in plan then computes the same numbers up to rounding)."""
    path = os.path.join(os.path.dirname(os.path.abspath(model_file)), PLAN_FILE)
    if not os.path.isfile(path):
        return None
    try:
        return Plan.load(path, origin="recorded")
    except PlanError:
        return None


def classify(model_file, images, engine="fast"):
    """Classify images with a model file, in one call: a :class:`Prediction` per image, in order.

    ``images`` are paths or the files' bytes (PNG, JPEG, ...: whatever Pillow
    reads); each is preprocessed as MNIST's digits were made
    (:mod:`npconv.data.images`). ``model_file`` is a ``model.npz``. To classify
    many batches with one model, load it once with :class:`Classifier`. ``engine``: as :class:`Classifier`'s.
    """
    return Classifier(model_file, engine=engine).classify(images)


def image_files(arguments):
    """The image files named by ``arguments``: paths, folders (their images, sorted) and glob patterns.

    A folder stands for the files in it whose extension is one of
    :data:`IMAGE_EXTENSIONS` (not its sub-folders); a pattern with ``*``, ``?``
    or ``[`` that is not itself an existing file stands for the files it
    matches, sorted; anything else is taken as it is (and fails later if it is
    not a readable image). A path named twice is kept once. Raises
    :class:`ImageError` for a folder with no images or a pattern that matches nothing.
    """
    found = []
    for arg in map(os.fspath, arguments):
        if os.path.isdir(arg):
            inside = sorted(os.path.join(arg, name) for name in os.listdir(arg)
                            if name.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(arg, name)))
            if not inside:
                raise ImageError(f"{arg}: a folder with no image files ({', '.join(IMAGE_EXTENSIONS)})")
            found += inside
        elif glob.has_magic(arg) and not os.path.exists(arg):
            matches = sorted(p for p in glob.glob(arg) if os.path.isfile(p))
            if not matches:
                raise ImageError(f"{arg}: no file matches this pattern")
            found += matches
        else:
            found.append(arg)
    return list(dict.fromkeys(found))


def confusion_matrix(labels, predictions, num_classes):
    """``m[t, p]`` = how many images of true class t were predicted as p."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (labels, predictions), 1)
    return m


@dataclass
class Evaluation:
    """A model file evaluated on a test set: loss, accuracy, every prediction and the true labels.

    ``warning`` is one line when the test set is not the data the model was
    trained on (another dataset, or data whose SHA-256 differs), else None.
    """

    dataset: str
    loss: float
    accuracy: float
    predictions: np.ndarray
    labels: np.ndarray
    num_classes: int
    warning: str | None = None


def data_mismatch(config, dataset):
    """One line saying how ``dataset`` differs from the data the model (its file's ``config``) was trained on.

    None when they are the same, or when the model file does not say (files
    written before npconv recorded the dataset's digest only compare names).
    """
    trained_on = config.get("dataset")
    if trained_on is not None and trained_on != dataset.name:
        return f"the model was trained on {trained_on}, not {dataset.name}: its accuracy here means little"
    digest = config.get("dataset_sha256")
    if digest is not None and digest != dataset.sha256:
        return (f"the model was trained on other {trained_on or 'data'} (SHA-256 {digest[:12]}...) than this "
                f"({dataset.sha256[:12]}...)")
    return None


def evaluate_model_file(path, dataset=None, data_dir=None, batch_size=1000, device="cpu", engine="fast"):
    """Load the model file at ``path`` (or in the run folder ``path``) and evaluate it on a test set (default: the
    dataset it was trained on).

    The result's ``warning`` says so when the test set is not from the data
    the model was trained on (:func:`data_mismatch`). ``device`` says where the
    model computes (``"cpu"`` or ``"cuda"``, :mod:`npconv.backend`), ``engine`` what computes it
    (``"fast"`` or ``"reference"``, :func:`npconv.engine.compile`).
    """
    with B.on_device(device):
        return _evaluate_model_file(path, dataset, data_dir, batch_size, device, engine)


def _evaluate_model_file(path, dataset, data_dir, batch_size, device, engine):
    path = model_file_of(path)
    classifier = Classifier(path, device, engine)
    config = classifier.config
    loaded = data.load_dataset(dataset or config.get("dataset", "mnist"), data_dir)
    if len(loaded.classes) != config["num_classes"]:
        raise NpconvError(f"{path}: the model has {config['num_classes']} classes, the data {len(loaded.classes)}")
    x = classifier.inputs(loaded.test_images)
    loss, acc, predictions = evaluate(classifier.model, nn.SoftmaxCrossEntropyLoss(), B.to_device(x),
                                      B.to_device(loaded.test_labels), batch_size)
    return Evaluation(loaded.name, loss, acc, predictions, loaded.test_labels, config["num_classes"],
                      data_mismatch(config, loaded))


__all__ = ["BATCH", "Classifier", "Evaluation", "IMAGE_EXTENSIONS", "LOW_CONFIDENCE", "Prediction", "class_names",
           "classify", "confusion_matrix", "data_mismatch", "evaluate_model_file", "fit_for", "image_files",
           "model_file_of"]
