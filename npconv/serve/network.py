"""What a trained network does with one image, layer by layer: the Draw view and ``POST /api/predict``.

The image is made the way the training images were made
(:func:`npconv.data.images.preprocess`: ink, crop, fit, centre by mass -- the
same function as ``npconv predict``), scaled and normalized as in training,
then run through the model's layers **one at a time, in the order they were
defined**, keeping every layer's output::

    x_0 = image (1, 1, 28, 28),   x_i = layer_i(x_{i-1}),   p = softmax(x_L)

computed by the engine's kernels (:func:`npconv.engine.layer_outputs`: the numbers
of ``npconv predict``). An output of shape (1, C, H, W) is shown as C feature maps,
one of shape (1, F) as F bars, whatever the layer.

Requests run at the same time: ``no_grad()`` holds for the thread that entered
it, and a forward pass under it keeps nothing on the model, so no lock is needed.
"""

from dataclasses import dataclass

import numpy as np

from .. import engine
from ..data.images import SIZE, preprocess
from ..inference import LOW_CONFIDENCE, fit_for, model_input
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
class Prediction:
    """The answer for one image: the 28x28 input the model saw (uint8, white ink on black), the class
    probabilities (K,), and every layer's output when asked for."""

    image: np.ndarray
    probabilities: np.ndarray
    layers: list | None = None

    @property
    def prediction(self):
        return int(self.probabilities.argmax())

    @property
    def not_sure(self):
        """The top probability is below :data:`npconv.inference.LOW_CONFIDENCE`."""
        return bool(self.probabilities.max() < LOW_CONFIDENCE)


def layer_outputs(model, x):
    """Run ``x`` through the layers of ``model`` (a Sequential in eval mode) in definition order.

    Returns one array per layer, each the layer's output (batch axis kept).
    """
    return engine.layer_outputs(model, x)


def classify(model, config, image, activations=False):
    """Classify one image file (its bytes); a :class:`Prediction` (with every layer's output if ``activations``).

    Raises :class:`npconv.data.images.ImageError` for bytes that are not a readable image, or too large a one.
    """
    pixels = preprocess(image, fit_for(config))
    outputs = layer_outputs(model, model_input(pixels[None], config))
    probabilities = softmax(outputs[-1].astype(np.float64))[0]
    layers = None
    if activations:
        layers = [LayerOutput(i, type(layer).__name__, repr(layer), np.ascontiguousarray(out[0], dtype=np.float32))
                  for i, (layer, out) in enumerate(zip(model, outputs))]
    return Prediction(pixels, probabilities, layers)


def architecture(model, config):
    """Each layer of the model: ``{"index", "type", "description", "output_shape", "parameters"}``.

    Output shapes are found by running one blank image through the layers (the batch axis left out).
    """
    blank = np.zeros((1, SIZE, SIZE), dtype=np.uint8)
    outputs = layer_outputs(model, model_input(blank, config))
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
