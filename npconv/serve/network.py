"""What a trained network does with one image, layer by layer: the Draw view and ``POST /api/predict``.

The image is classified by npconv's one prediction path,
:class:`npconv.inference.Classifier` (made the way the training images were
made, scaled as in training; a :class:`~npconv.inference.Prediction`), as
``npconv predict`` classifies it. What the server adds is the view of every
layer: the input is run through the model's layers **one at a time, in the
order they were defined**, keeping every layer's output::

    x_0 = image (1, 1, 28, 28),   x_i = layer_i(x_{i-1}),   p = softmax(x_L)

computed by the engine's kernels (:func:`npconv.engine.layer_outputs`: the numbers
of ``npconv predict``). An output of shape (1, C, H, W) is shown as C feature maps,
one of shape (1, F) as F bars, whatever the layer.

Requests run at the same time: ``no_grad()`` holds for the thread that entered
it, and a forward pass under it keeps nothing on the model, so no lock is needed.
"""

from dataclasses import dataclass

import numpy as np

from .. import backend as B
from .. import engine
from ..data.images import SIZE
from ..inference import Prediction
from ..nn.loss import softmax

@dataclass
class LayerOutput:
    """One layer's output for one image: ``values`` has the output's shape without the batch axis."""

    index: int
    type: str
    description: str
    values: np.ndarray

    @property
    def kind(self):
        """``"maps"`` for (C, H, W) outputs, ``"vector"`` for (F,), ``"other"`` otherwise."""
        return {3: "maps", 1: "vector"}.get(self.values.ndim, "other")


@dataclass
class Drawing:
    """The answer for one image: the :class:`~npconv.inference.Prediction`, the 28x28 input the model saw (uint8,
    white ink on black) and every layer's output (a :class:`LayerOutput` each) when asked for."""

    prediction: Prediction
    image: np.ndarray
    layers: list | None = None


def layer_outputs(model, x):
    """Run ``x`` through the layers of ``model`` (a Sequential in eval mode) in definition order.

    Returns one array per layer, each the layer's output (batch axis kept).
    """
    return engine.layer_outputs(model, x)


def classify(classifier, image, activations=False):
    """Classify one image file (its bytes) with ``classifier`` (a :class:`~npconv.inference.Classifier`): a
    :class:`Drawing`, with every layer's output if ``activations``.

    Raises :class:`npconv.data.images.ImageError` for bytes that are not a readable image, or too large a one.
    """
    pixels = classifier.preprocess(image)
    if not activations:
        (prediction,) = classifier.predictions(pixels[None], ["image"])
        return Drawing(prediction, pixels)
    # The layers' outputs end in the model's own logits (the same numbers, see the module docstring): one pass.
    network = classifier.network
    outputs = layer_outputs(network, classifier.inputs(pixels[None]))
    prediction = Prediction.of("image", B.to_numpy(softmax(outputs[-1]))[0], classifier.classes)
    layers = [LayerOutput(i, type(layer).__name__, repr(layer), np.ascontiguousarray(out[0], dtype=np.float32))
              for i, (layer, out) in enumerate(zip(network, outputs))]
    return Drawing(prediction, pixels, layers)


def architecture(classifier):
    """Each layer of the classifier's model: ``{"index", "type", "description", "output_shape", "parameters"}``.

    Output shapes are found by running one blank image through the layers (the batch axis left out).
    """
    model = classifier.network
    outputs = layer_outputs(model, classifier.inputs(np.zeros((1, SIZE, SIZE), dtype=np.uint8)))
    return [{"index": i, "type": type(layer).__name__, "description": repr(layer),
             "output_shape": list(out.shape[1:]), "parameters": sum(int(p.data.size) for p in layer.parameters())}
            for i, (layer, out) in enumerate(zip(model, outputs))]


def first_filters(model):
    """The weights of the model's first layer with a 4-D weight (a convolution): ``(index, array (O, I, KH, KW))``,
    or None for a model without one."""
    for i, layer in enumerate(model):
        weight = getattr(layer, "weight", None)
        if weight is not None and weight.data.ndim == 4:
            return i, np.asarray(weight.data, dtype=np.float32)
    return None
