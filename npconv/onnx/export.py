"""An npconv model as an ONNX graph (``npconv export SOURCE --format onnx --out FILE.onnx``).

The graph takes what ``npconv predict`` gives the model before its input scaling -- float32 pixels in [0, 1],
shape ``(N, 1, 28, 28)``, any batch size ``N`` -- and gives the logits ``(N, classes)``. The scaling the model
was trained with (:func:`npconv.data.to_float`) is the graph's first nodes, so any ONNX client gets the right
answer from raw pixels::

    pixels -> Sub(normalize_mean) -> Div(normalize_std) -> the layers -> logits

Each layer becomes one ONNX operator (opset :data:`~npconv.onnx.OPSET`):

==================  =========================================================================
npconv              ONNX
==================  =========================================================================
Conv2d              ``Conv`` (pads ``[ph, pw, ph, pw]``)
Linear              ``Gemm`` with ``transB = 1`` (the weight stays ``(out_features, in_features)``)
ReLU, Sigmoid, Tanh ``Relu``, ``Sigmoid``, ``Tanh``
MaxPool2d           ``MaxPool``
AvgPool2d           ``AveragePool`` with ``count_include_pad = 1`` (npconv divides by the whole window)
BatchNorm1d/2d      ``BatchNormalization`` on the running statistics (its evaluation form);
                    ONNX's ``momentum`` is ``1 - momentum`` (it weighs the old running value)
Flatten             ``Flatten`` (axis 1)
Dropout             nothing: the identity at inference
==================  =========================================================================

Initializers keep the model file's names (``"0.weight"``, ``"1.running_mean"``), which are PyTorch's.
ONNX Runtime has no float64 convolution, so a float64 model is written in float32.
"""

import json
import os

import numpy as np

from .. import __version__, nn
from ..errors import NpconvError
from ..inference import class_names
from ..io import atomic_write
from ..train.modelfile import load_model
from ..train.runfolder import model_file_of
from . import INPUT_NAME, IR_VERSION, OPSET, OUTPUT_NAME, require_onnx

FORMATS = ("onnx",)


def check_out_file(out):
    """Refuse an output path whose folder does not exist, before anything is computed."""
    folder = os.path.dirname(os.path.abspath(os.fspath(out)))
    if not os.path.isdir(folder):
        raise NpconvError(f"{out}: the folder {folder} does not exist")
    if os.path.isdir(out):
        raise NpconvError(f"{out}: is a directory; name the file to write")


def export_onnx(source, out):
    """Write the model of ``source`` (a run folder or a ``model.npz``) to ``out`` as ONNX; returns notes (lines).

    Raises :class:`~npconv.errors.NpconvError` (a subclass for a damaged model file) with one line.
    """
    check_out_file(out)
    model, config = load_model(model_file_of(source))
    proto, notes = onnx_model(model, config)
    with atomic_write(out) as f:
        f.write(proto.SerializeToString())
    return notes


def onnx_model(model, config):
    """The ONNX ``ModelProto`` of an npconv ``model`` (a Sequential) and its model file's ``config``.

    Returns ``(model_proto, notes)``; the graph passes ``onnx.checker.check_model(full_check=True)``.
    """
    onnx = require_onnx()
    from onnx import TensorProto, helper

    graph = _Graph()
    notes = []
    if np.dtype(config["dtype"]) != np.float32:
        notes.append(f"the model is {config['dtype']}: its graph is float32 (ONNX Runtime has no float64 conv)")
    x = INPUT_NAME
    mean, std = config.get("normalize_mean"), config.get("normalize_std")
    if mean is not None:  # the same steps as npconv.data.to_float: (pixels - mean) / std
        x = graph.node("Sub", [x, graph.constant("normalize_mean", np.float32(mean))], "normalize")
    if std is not None:
        x = graph.node("Div", [x, graph.constant("normalize_std", np.float32(std))], "normalize")
    for index, layer in enumerate(model):
        write = next((w for kind, w in _WRITERS.items() if isinstance(layer, kind)), None)
        if write is None:
            raise NpconvError(f"layer {index} ({type(layer).__name__}) has no ONNX form in npconv's export")
        x = write(graph, str(index), layer, x)
    if x == INPUT_NAME:
        raise NpconvError("the model has no layer that computes anything")
    graph.rename_output(x, OUTPUT_NAME)

    classes = class_names(config)
    batch = "N"  # a named dimension: any batch size
    g = helper.make_graph(
        graph.nodes, "npconv",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [batch, 1, 28, 28])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [batch, len(classes)])],
        graph.initializers,
        doc_string="pixels: float32 (N, 1, 28, 28) in [0, 1]; logits: (N, classes). The input normalization "
                   "is inside the graph.",
    )
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name="npconv", producer_version=__version__)
    helper.set_model_props(proto, {
        "classes": json.dumps(classes),
        "dataset": config.get("dataset") or "",
        "npconv_version": __version__,
        "normalize_mean": json.dumps(mean),
        "normalize_std": json.dumps(std),
        "model": str(config.get("model")),
    })
    onnx.checker.check_model(proto, full_check=True)
    return proto, notes


class _Graph:
    """The nodes and initializers of the graph being written, in order."""

    def __init__(self):
        self.nodes, self.initializers = [], []

    def constant(self, name, array):
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.asarray(array, dtype=np.float32), name))
        return name

    def node(self, op, inputs, prefix, **attributes):
        from onnx import helper

        output = f"{prefix}.{op}"
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    def rename_output(self, old, new):
        """The graph's output is the last node's output under its public name."""
        last = self.nodes[-1]
        assert last.output[0] == old, (last.output[0], old)
        last.output[0] = new


def _parameter(graph, prefix, name, value):
    return graph.constant(f"{prefix}.{name}", np.asarray(value))


def _pair(value):
    """A size as (along H, along W): npconv's layers keep pairs, an int means the same along both."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _conv(graph, prefix, layer, x):
    (kh, kw), (sh, sw), (ph, pw) = _pair(layer.kernel_size), _pair(layer.stride), _pair(layer.padding)
    inputs = [x, _parameter(graph, prefix, "weight", layer.weight.data),
              _parameter(graph, prefix, "bias", layer.bias.data)]
    return graph.node("Conv", inputs, prefix, kernel_shape=[kh, kw], strides=[sh, sw], pads=[ph, pw, ph, pw])


def _linear(graph, prefix, layer, x):
    inputs = [x, _parameter(graph, prefix, "weight", layer.weight.data),
              _parameter(graph, prefix, "bias", layer.bias.data)]
    return graph.node("Gemm", inputs, prefix, transB=1)


def _max_pool(graph, prefix, layer, x):
    return graph.node("MaxPool", [x], prefix, kernel_shape=list(_pair(layer.kernel_size)),
                      strides=list(_pair(layer.stride)))


def _avg_pool(graph, prefix, layer, x):
    ph, pw = _pair(layer.padding)
    return graph.node("AveragePool", [x], prefix, kernel_shape=list(_pair(layer.kernel_size)),
                      strides=list(_pair(layer.stride)), pads=[ph, pw, ph, pw], count_include_pad=1)


def _batch_norm(graph, prefix, layer, x):
    c = layer.running_mean.data.shape[0]
    affine = getattr(layer, "weight", None) is not None  # without learnable gamma and beta: 1 and 0
    scale = layer.weight.data if affine else np.ones(c)
    shift = layer.bias.data if affine else np.zeros(c)
    inputs = [x, _parameter(graph, prefix, "weight", scale), _parameter(graph, prefix, "bias", shift),
              _parameter(graph, prefix, "running_mean", layer.running_mean.data),
              _parameter(graph, prefix, "running_var", layer.running_var.data)]
    return graph.node("BatchNormalization", inputs, prefix, epsilon=float(layer.eps), momentum=1 - layer.momentum)


def _activation(op):
    return lambda graph, prefix, layer, x: graph.node(op, [x], prefix)


def _flatten(graph, prefix, layer, x):
    return graph.node("Flatten", [x], prefix, axis=1)


def _identity(graph, prefix, layer, x):
    return x  # Dropout: the identity at inference, so no node at all


_WRITERS = {
    nn.Conv2d: _conv, nn.Linear: _linear, nn.MaxPool2d: _max_pool, nn.AvgPool2d: _avg_pool,
    nn.BatchNorm1d: _batch_norm, nn.BatchNorm2d: _batch_norm, nn.ReLU: _activation("Relu"),
    nn.Sigmoid: _activation("Sigmoid"), nn.Tanh: _activation("Tanh"), nn.Flatten: _flatten, nn.Dropout: _identity,
}
