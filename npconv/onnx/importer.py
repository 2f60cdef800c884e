"""An ONNX chain of layers as an npconv model file (``npconv import FILE.onnx --out FILE.npz``).

What imports: one image input, float32 ``(N, 1, 28, 28)`` (or ``(N, 784)``: a Flatten is put first), a chain
of the operations npconv has a layer for, and one output, one value per class -- the graphs
``torch.onnx.export`` writes for a ``torch.nn.Sequential`` of such layers, and those ``npconv export`` writes:

====================================  ==================================================================
ONNX                                  npconv
====================================  ==================================================================
``Conv``                              Conv2d (symmetric pads, no dilation, no groups)
``Gemm``, or ``MatMul`` (+ ``Add``)   Linear
``Relu``, ``Sigmoid``, ``Tanh``       ReLU, Sigmoid, Tanh
``MaxPool``                           MaxPool2d (no padding, no ceil mode)
``AveragePool``                       AvgPool2d (padding only with ``count_include_pad = 1``)
``GlobalMaxPool``,                    MaxPool2d, AvgPool2d with a window the size of the image
``GlobalAveragePool``
``BatchNormalization``                BatchNorm2d on images, BatchNorm1d on features
``Flatten`` (axis 1), ``Reshape``     Flatten; a Reshape to ``(N, -1)``, also through the ``Shape``,
                                      ``Gather``, ``Unsqueeze``, ``Concat`` nodes ``x.view(x.size(0), -1)``
                                      writes
``Identity``, ``Dropout``             nothing (the identity at inference)
``Sub``, ``Div`` by a number first    the input normalization (``normalize_mean``, ``normalize_std``)
====================================  ==================================================================

Weights must be stored in the file (initializers or ``Constant`` nodes), never computed. Anything else -- an
operation npconv has no layer for, a branch (a tensor used by two nodes), a node off the chain, a shape the
layers cannot follow -- is refused with one line naming the node and its op type, and nothing is written.

The file is untrusted input, like a ``model.npz``: its size is checked before it is read
(:data:`MAX_ONNX_BYTES`), it is parsed as data (protobuf), never run, and tensors stored outside it (ONNX's
external data) are refused. Every array is checked against the layer it feeds before it is used.
"""

import json
import math
import os
from collections import defaultdict

import numpy as np

from ..data import DATASETS
from ..errors import NpconvError
from ..io.npz import one_line
from ..models import ModelSpecError, build_model, check_layers
from ..train.modelfile import MAX_CLASSES, save_model
from . import require_onnx
from .export import check_out_file

#: Largest ONNX file npconv reads (checked before reading it); the presets' graphs are under 1 MB.
MAX_ONNX_BYTES = 256 << 20

#: The operations :func:`import_onnx` turns into layers (or into nothing, or into the input normalization).
SUPPORTED_OPS = ("Conv", "Gemm", "MatMul", "Relu", "Sigmoid", "Tanh", "MaxPool", "AveragePool", "GlobalMaxPool",
                 "GlobalAveragePool", "BatchNormalization", "Flatten", "Reshape", "Identity", "Dropout", "Sub", "Div")
# Nodes that only compute a shape, for a Reshape: evaluated on the known shape, never on data.
_SHAPE_OPS = ("Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast")
# Most nodes a Reshape's shape may go through (PyTorch's x.view(x.size(0), -1) writes four).
_MAX_SHAPE_DEPTH = 16


class OnnxImportError(NpconvError):
    """An ONNX file npconv cannot import: the message says which file, node and why."""


def import_onnx(path, out, mean=None, std=None):
    """Import the ONNX file at ``path`` as an npconv model file at ``out``; returns notes (lines) for the user.

    ``mean`` and ``std`` are the input normalization the model expects (pixels in [0, 1] become
    ``(pixels - mean) / std``) when the graph does not do it itself; given for a graph that does, they are
    an error. Raises :class:`OnnxImportError` (one line), and then writes nothing.
    """
    path = os.fspath(path)
    check_out_file(out)
    for name, value in (("--mean", mean), ("--std", std)):
        if value is not None and not math.isfinite(value):
            raise OnnxImportError(f"{name} must be a finite number, got {value}")
    if std is not None and std <= 0:
        raise OnnxImportError(f"--std must be > 0, got {std}")
    proto = read_onnx(path)
    try:
        chain = _Chain(proto.graph).follow()
    except OnnxImportError as e:
        raise OnnxImportError(f"{path}: {e}") from None
    notes = list(chain.notes)
    metadata = {p.key: p.value for p in proto.metadata_props}
    if chain.mean is not None or chain.std is not None:
        if mean is not None or std is not None:
            given = (("mean", chain.mean), ("std", chain.std))
            shown = ", ".join(f"{name} {_short(value)}" for name, value in given if value is not None)
            raise OnnxImportError(f"{path}: the graph normalizes its input itself ({shown}); leave out --mean and "
                                  "--std")
        mean, std = (_from_graph(value, metadata.get(key)) for value, key in
                     ((chain.mean, "normalize_mean"), (chain.std, "normalize_std")))
    num_classes = chain.shape[0]
    if num_classes > MAX_CLASSES:
        raise OnnxImportError(f"{path}: the graph gives {num_classes} values per image, more than the "
                              f"{MAX_CLASSES} classes a model may have")
    classes, dataset, more = _classes_and_dataset(metadata, num_classes)
    notes += more
    stem = os.path.splitext(os.path.basename(path))[0] or "imported"
    config = {
        # A model described by its layers is named like an architecture file (model.npz requires it): the name says
        # where it came from; its layers are recorded, so no .toml file is ever read.
        "model": f"{stem}.toml", "dropout": 0.0, "dropout_at": "before-fc", "dtype": "float32",
        "model_layers": chain.layers, "num_classes": num_classes, "classes": classes, "dataset": dataset,
        "dataset_sha256": None, "normalize_mean": mean, "normalize_std": std,
        "imported_from": os.path.basename(path),
    }
    try:
        model = build_model(config["model"], layers=chain.layers, num_classes=num_classes,
                            rng=np.random.default_rng(0))
        model.load_state_dict(chain.state)
    except (ModelSpecError, ValueError) as e:
        raise OnnxImportError(f"{path}: the weights do not fit the layers: {one_line(e)}") from None
    save_model(out, model, config)
    return notes


def read_onnx(path):
    """The ``ModelProto`` in the file at ``path``, read as data with a size limit; :class:`OnnxImportError`."""
    onnx = require_onnx()
    try:
        size = os.path.getsize(path)
        if os.path.isdir(path):
            raise OnnxImportError(f"{path}: is a directory, not an ONNX file")
        if size > MAX_ONNX_BYTES:
            raise OnnxImportError(f"{path}: {size} bytes, more than the {MAX_ONNX_BYTES} an ONNX file may have")
        with open(path, "rb") as f:
            data = f.read(MAX_ONNX_BYTES + 1)
    except FileNotFoundError:
        raise OnnxImportError(f"{path}: no such file") from None
    except OSError as e:
        raise OnnxImportError(f"{path}: cannot be read ({e.strerror or e})") from None
    if len(data) > MAX_ONNX_BYTES:  # it grew since it was measured
        raise OnnxImportError(f"{path}: more than the {MAX_ONNX_BYTES} bytes an ONNX file may have")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception:  # noqa: BLE001 - protobuf's parser of untrusted bytes: any failure means "not a model"
        raise OnnxImportError(f"{path}: not an ONNX file, or a damaged or truncated one") from None
    if not proto.HasField("graph") or not proto.graph.node or not proto.opset_import:
        raise OnnxImportError(f"{path}: not an ONNX file, or a damaged or truncated one (no graph in it)")
    stored = [*proto.graph.initializer, *(a.t for node in proto.graph.node for a in node.attribute if a.HasField("t"))]
    outside = next((t.name for t in stored if t.data_location == onnx.TensorProto.EXTERNAL or t.external_data), None)
    if outside is not None:  # checked before the checker, which would look for the other file
        raise OnnxImportError(f"{path}: the tensor {outside!r} is stored in another file; npconv reads one file only")
    try:
        onnx.checker.check_model(proto)
    except Exception as e:  # noqa: BLE001 - the checker reports a malformed graph in several exception types
        raise OnnxImportError(f"{path}: not a valid ONNX model ({one_line(e)[:300]})") from None
    return proto


def _from_graph(value, exact):
    """A normalization value from the graph (float32), or the model file's exact one recorded in the metadata."""
    if value is None:
        return None
    try:
        recorded = json.loads(exact) if exact is not None else None
    except (ValueError, RecursionError):
        recorded = None
    if isinstance(recorded, (int, float)) and np.float32(recorded) == np.float32(value):
        return float(recorded)
    return _short(value)


def _short(value):
    """A float32 value as the shortest decimal that gives it back (1e-05, not 9.999999747378752e-06)."""
    return float(str(np.float32(value)))


def _classes_and_dataset(metadata, num_classes):
    """The class names and dataset from npconv's metadata when present, else MNIST's digits (with a note)."""
    notes = []
    classes = None
    try:
        recorded = json.loads(metadata["classes"]) if "classes" in metadata else None
    except (ValueError, RecursionError):
        recorded = None
    if isinstance(recorded, list) and len(recorded) == num_classes and all(isinstance(c, str) for c in recorded):
        classes = recorded
    dataset = metadata.get("dataset")
    if dataset not in DATASETS:
        dataset = None
    if classes is None and dataset is not None and len(DATASETS[dataset].classes) == num_classes:
        classes = list(DATASETS[dataset].classes)
    if dataset is None:
        dataset = "mnist"
        notes.append("the file does not name its dataset: taken as MNIST (evaluate --dataset: another)")
    if classes is None:
        classes = [str(i) for i in range(num_classes)]
        if num_classes == 10:
            notes.append("the file does not name its classes: taken as the digits 0-9")
        else:
            notes.append(f"the file does not name its classes: called 0 to {num_classes - 1}")
    return classes, dataset, notes


class _Chain:
    """Follow an ONNX graph from its input to its output, one node at a time, turning nodes into layers.

    After :meth:`follow`: ``layers`` (architecture-file layers, normalized), ``state`` (their arrays under
    ``state_dict`` names), ``shape`` (the output's per-image shape), ``mean``/``std`` (a normalization the
    graph does first, or None) and ``notes``.
    """

    def __init__(self, graph):
        self.graph = graph
        self.layers, self.arrays, self.notes = [], [], []
        self.mean = self.std = None
        self.rounded = False  # float64 weights were rounded to float32 (said once, in the notes)
        self.visited = set()
        self.constants = _constants(graph, self.visited)
        self.producer = {}
        self.consumers = defaultdict(list)
        for k, node in enumerate(graph.node):
            if k in self.visited:
                continue
            for name in node.output:
                self.producer[name] = k
            for name in node.input:
                if name and name not in self.constants:
                    self.consumers[name].append(k)

    # --- the walk --------------------------------------------------------------
    def follow(self):
        x = self._input()
        outputs = [o.name for o in self.graph.output]
        if len(outputs) != 1:
            raise OnnxImportError(f"the graph has {len(outputs)} outputs; npconv imports one (the logits)")
        while x != outputs[0]:
            k = self._next(x)
            x = self._take(k, x)
        if self.consumers.get(x):
            k = self.consumers[x][0]
            raise OnnxImportError(f"{self._name(k)}: uses the graph's output, which makes the graph a branch")
        left = [k for k in range(len(self.graph.node)) if k not in self.visited]
        if left:
            raise OnnxImportError(f"{self._name(left[0])}: not on the chain from the input to the output")
        if not self.layers:
            raise OnnxImportError("the graph has no layer npconv can import")
        self.shape = self._shape()
        if len(self.shape) != 1:
            raise OnnxImportError(f"the graph's output is {_describe(self.shape)} per image, not one value per "
                                  "class")
        self.layers = check_layers(self.layers, self.shape[0]).layers
        self.state = {}
        for index, arrays in enumerate(self.arrays):
            self.state.update({f"{index}.{name}": value for name, value in arrays.items()})
        return self

    def _input(self):
        """The graph's one input: an image batch (N, 1, 28, 28), or flat images (N, 784) (then a Flatten first)."""
        inputs = [i for i in self.graph.input if i.name not in self.constants]
        if len(inputs) != 1:
            raise OnnxImportError(f"the graph has {len(inputs)} inputs; npconv imports a graph of one (the images)")
        value = inputs[0]
        if not value.type.HasField("tensor_type") or value.type.tensor_type.elem_type != 1:  # 1: FLOAT
            raise OnnxImportError(f"the graph's input {value.name!r} is not float32 images (export the network in "
                                  "float32)")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
        shown = "(" + ", ".join("N" if d is None else str(d) for d in dims) + ")"
        if dims[1:] == [1, 28, 28]:
            pass
        elif dims[1:] == [784]:
            self._append_layer({"type": "flatten"}, {}, None)
            self.notes.append(f"the graph takes flat images {shown}: a flatten layer comes first")
        else:
            raise OnnxImportError(f"the graph's input {value.name!r} has the shape {shown}, not an image batch "
                                  "(N, 1, 28, 28)")
        self.first_layer = len(self.layers)  # the normalization, if any, comes before any layer after this
        return value.name

    def _next(self, x):
        """The one node that uses ``x`` (nodes that only read its shape aside), or a branch error."""
        users = [k for k in self.consumers.get(x, []) if self.graph.node[k].op_type != "Shape"]
        if not users:
            raise OnnxImportError(f"the tensor {x!r} leads nowhere: the chain does not reach the graph's output")
        if len(users) > 1:
            raise OnnxImportError(f"{self._name(users[0])} and {self._name(users[1])} both use {x!r}: a branch "
                                  "(npconv imports a chain of layers)")
        return users[0]

    def _take(self, k, x):
        """Turn node ``k`` (whose data input is ``x``) into a layer (or nothing); returns the tensor it gives."""
        node = self.graph.node[k]
        self.visited.add(k)
        where = self._name(k)
        if node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED_OPS:
            raise OnnxImportError(f"{where}: npconv has no layer for this operation (npconv import --help lists "
                                  "those it imports)")
        if not node.input or node.input[0] != x:
            raise OnnxImportError(f"{where}: takes {x!r} as another input than its first")
        outputs = [name for name in node.output if name]
        if any(self.consumers.get(name) for name in outputs[1:]):
            raise OnnxImportError(f"{where}: its second output is used, which npconv's layer does not give")
        attributes = _attributes(node)
        handler = getattr(self, "_" + node.op_type.lower())
        return handler(where, node, attributes) or outputs[0]  # MatMul + Add gives the Add's output

    # --- one method per op ------------------------------------------------------
    def _conv(self, where, node, a):
        w = self._weight(where, node, 1, "weight", ndim=4)
        k, c, kh, kw = w.shape
        if a.get("group", 1) != 1 or any(d != 1 for d in a.get("dilations", [1, 1])):
            raise OnnxImportError(f"{where}: grouped or dilated convolution (npconv's Conv2d has neither)")
        if a.get("kernel_shape", [kh, kw]) != [kh, kw]:
            raise OnnxImportError(f"{where}: kernel_shape {a['kernel_shape']} disagrees with the weight's {kh}x{kw}")
        self._no_auto_pad(where, a)
        bias = self._weight(where, node, 2, "bias", shape=(k,), default=np.zeros(k, np.float32))
        layer = {"type": "conv2d", "in_channels": c, "out_channels": k, "kernel_size": [kh, kw],
                 "stride": a.get("strides", [1, 1]), "padding": _symmetric(where, a.get("pads", [0, 0, 0, 0]))}
        self._append_layer(layer, {"weight": w, "bias": bias}, where)

    def _gemm(self, where, node, a):
        if a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0 or a.get("transA", 0) != 0:
            raise OnnxImportError(f"{where}: alpha, beta or transA other than 1, 1, 0 (npconv's Linear has none)")
        w = self._weight(where, node, 1, "weight", ndim=2)
        if not a.get("transB", 0):
            w = np.ascontiguousarray(w.T)  # ONNX's B is (in, out) without transB; a Linear keeps (out, in)
        out = w.shape[0]
        bias = self._weight(where, node, 2, "bias", default=np.zeros(out, np.float32))
        if bias.size != out:
            raise OnnxImportError(f"{where}: its bias has {bias.size} values for {out} outputs")
        self._linear(where, w, bias.reshape(out))

    def _matmul(self, where, node, a):
        w = np.ascontiguousarray(self._weight(where, node, 1, "weight", ndim=2).T)
        out = w.shape[0]
        bias = np.zeros(out, np.float32)
        users = self.consumers.get(node.output[0], [])
        if len(users) == 1 and self.graph.node[users[0]].op_type == "Add":  # MatMul + Add: a Linear with a bias
            add = self.graph.node[users[0]]
            other = [name for name in add.input if name != node.output[0]]
            if len(other) == 1 and other[0] in self.constants and self.constants[other[0]].size == out:
                bias = self._as_float(self._name(users[0]), "bias", self.constants[other[0]]).reshape(out)
                self.visited.add(users[0])
                self._linear(where, w, bias)
                return add.output[0]  # the chain goes on from the Add
        self._linear(where, w, bias)
        return None

    def _linear(self, where, w, bias):
        out, inp = w.shape
        self._append_layer({"type": "linear", "in_features": inp, "out_features": out},
                           {"weight": w, "bias": bias}, where)

    def _relu(self, where, node, a):
        self._append_layer({"type": "relu"}, {}, where)

    def _sigmoid(self, where, node, a):
        self._append_layer({"type": "sigmoid"}, {}, where)

    def _tanh(self, where, node, a):
        self._append_layer({"type": "tanh"}, {}, where)

    def _maxpool(self, where, node, a):
        self._pool_checks(where, a)
        if any(a.get("pads", [0])) or a.get("storage_order", 0):
            raise OnnxImportError(f"{where}: padding or storage_order (npconv's MaxPool2d has neither)")
        kernel = a.get("kernel_shape")
        self._append_layer({"type": "maxpool2d", "kernel_size": kernel, "stride": a.get("strides", [1, 1])}, {},
                           where)

    def _averagepool(self, where, node, a):
        self._pool_checks(where, a)
        pads = _symmetric(where, a.get("pads", [0, 0, 0, 0]))
        if any(pads) and not a.get("count_include_pad", 0):
            raise OnnxImportError(f"{where}: padding with count_include_pad = 0 (npconv's AvgPool2d divides by the "
                                  "whole window, count_include_pad = 1)")
        self._append_layer({"type": "avgpool2d", "kernel_size": a.get("kernel_shape"),
                            "stride": a.get("strides", [1, 1]), "padding": pads}, {}, where)

    def _globalmaxpool(self, where, node, a):
        self._global_pool(where, "maxpool2d")

    def _globalaveragepool(self, where, node, a):
        self._global_pool(where, "avgpool2d")

    def _global_pool(self, where, kind):
        """A pool over the whole image (PyTorch's ``AdaptiveAvgPool2d(1)``): a window the size of the image."""
        shape = self._shape()
        if len(shape) != 3:
            raise OnnxImportError(f"{where}: needs images (N, C, H, W), gets {_describe(shape)}")
        size = list(shape[1:])
        self._append_layer({"type": kind, "kernel_size": size, "stride": size}, {}, where)

    def _pool_checks(self, where, a):
        if a.get("ceil_mode", 0) or any(d != 1 for d in a.get("dilations", [1, 1])):
            raise OnnxImportError(f"{where}: ceil_mode or dilations (npconv's pooling has neither)")
        if len(a.get("kernel_shape") or []) != 2:
            raise OnnxImportError(f"{where}: needs a 2-D kernel_shape")
        self._no_auto_pad(where, a)

    def _batchnormalization(self, where, node, a):
        if a.get("training_mode", 0):
            raise OnnxImportError(f"{where}: in training mode; npconv imports the evaluation form")
        shape = self._shape()
        c = shape[0]
        names = ("weight", "bias", "running_mean", "running_var")
        arrays = {name: self._weight(where, node, i, name, shape=(c,)) for i, name in enumerate(names, start=1)}
        kind = "batchnorm2d" if len(shape) == 3 else "batchnorm1d"
        momentum = _short(1 - _short(a.get("momentum", 0.9)))  # ONNX weighs the old value, npconv the new one
        layer = {"type": kind, "num_features": c, "eps": _short(a.get("epsilon", 1e-5)), "momentum": momentum,
                 "affine": True}
        self._append_layer(layer, {**arrays, "num_batches_tracked": np.zeros((), np.int64)}, where)

    def _flatten(self, where, node, a):
        if a.get("axis", 1) != 1:
            raise OnnxImportError(f"{where}: flattens from axis {a['axis']}; npconv's Flatten keeps the batch axis "
                                  "(axis 1)")
        self._append_layer({"type": "flatten"}, {}, where)

    def _reshape(self, where, node, a):
        """A Reshape that flattens each image: to ``(N, -1)`` or ``(N, C*H*W)``, the shape stored or computed."""
        shape = self._shape()
        size = math.prod(shape)
        target = self._shape_value(where, node.input[1] if len(node.input) > 1 else "", shape, node.input[0])
        flat = len(target) == 2 and not a.get("allowzero", 0) and (
            (target[0] in ("N", 0) and target[1] in (-1, size)) or (target[0] == -1 and target[1] == size))
        if not flat:
            raise OnnxImportError(f"{where}: reshapes {_describe(shape)} to {target}; npconv follows only a flatten "
                                  "to (N, features)")
        self._append_layer({"type": "flatten"}, {}, where)

    def _identity(self, where, node, a):
        """Identity, and Dropout at inference: no layer."""

    def _dropout(self, where, node, a):
        if len(node.input) > 2 and node.input[2]:
            mode = self.constants.get(node.input[2])
            if mode is None or bool(mode.reshape(-1)[0]):
                raise OnnxImportError(f"{where}: dropout in training mode; npconv imports the evaluation form")

    def _sub(self, where, node, a):
        self._normalization(where, node, "mean")

    def _div(self, where, node, a):
        self._normalization(where, node, "std")

    def _normalization(self, where, node, which):
        """``(x - mean) / std`` by single numbers, before any layer: the input normalization."""
        value = self.constants.get(node.input[1]) if len(node.input) > 1 else None
        first = len(self.layers) == self.first_layer
        if value is None or value.size != 1 or not first or getattr(self, which) is not None or (
                which == "mean" and self.std is not None):
            raise OnnxImportError(f"{where}: npconv imports {node.op_type} only as the input normalization: "
                                  "by one stored number, before any layer, Sub before Div")
        number = float(value.reshape(-1)[0])
        if not math.isfinite(number) or (which == "std" and number <= 0):
            raise OnnxImportError(f"{where}: normalizes by {number}")
        setattr(self, which, number)

    # --- helpers ----------------------------------------------------------------
    def _name(self, k):
        node = self.graph.node[k]
        return f"node {node.name or '#' + str(k + 1)!r} ({node.op_type})"

    def _no_auto_pad(self, where, a):
        if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            raise OnnxImportError(f"{where}: auto_pad {a['auto_pad']}; npconv needs explicit pads")

    def _weight(self, where, node, i, what, ndim=None, shape=None, default=None):
        """Input ``i`` of ``node``: a stored array, float32, of ``ndim`` dimensions or of ``shape``."""
        name = node.input[i] if len(node.input) > i else ""
        if not name:
            if default is None:
                raise OnnxImportError(f"{where}: has no {what}")
            return default
        if name not in self.constants:
            raise OnnxImportError(f"{where}: its {what} {name!r} is computed in the graph, not stored; npconv "
                                  "imports stored weights")
        value = self.constants[name]
        if ndim is not None and value.ndim != ndim or shape is not None and value.shape != shape:
            wanted = f"{ndim} dimensions" if ndim is not None else f"the shape {shape}"
            raise OnnxImportError(f"{where}: its {what} has the shape {value.shape}, not {wanted}")
        return self._as_float(where, what, value)

    def _as_float(self, where, what, value):
        if value.dtype.kind != "f":
            raise OnnxImportError(f"{where}: its {what} holds {value.dtype} values, not floats")
        if value.dtype == np.float64 and not self.rounded:
            self.rounded = True
            self.notes.append("the graph stores float64 weights: rounded to float32")
        return np.ascontiguousarray(value, dtype=np.float32)

    def _append_layer(self, layer, arrays, where):
        """Add a layer and check that the shapes still follow (naming the node when they do not)."""
        self.layers.append(layer)
        self.arrays.append(arrays)
        try:
            check_layers(self.layers)
        except ModelSpecError as e:
            raise OnnxImportError(f"{where or 'the input'}: {e}") from None

    def _shape(self):
        """The per-image shape after the layers so far: (C, H, W) or (features,)."""
        return (1, 28, 28) if not self.layers else check_layers(self.layers).output_shape

    def _shape_value(self, where, name, shape, data, depth=0):
        """The integers a Reshape's shape input holds: stored, or computed from ``Shape`` of the data, whose
        batch size is ``"N"`` (the nodes are read, never run: only these few ops on a known shape)."""
        if name in self.constants:
            value = self.constants[name]
            if value.dtype.kind not in "iu" or value.ndim != 1:
                raise OnnxImportError(f"{where}: its shape is not a list of integers")
            return [int(v) for v in value]
        k = self.producer.get(name)
        if k is None:
            raise OnnxImportError(f"{where}: its shape {name!r} comes from nowhere")
        if depth > _MAX_SHAPE_DEPTH:
            raise OnnxImportError(f"{where}: its shape is computed by more than {_MAX_SHAPE_DEPTH} nodes")
        node, a = self.graph.node[k], _attributes(self.graph.node[k])
        inner = self._name(k)
        if node.op_type not in _SHAPE_OPS or len(self.consumers.get(name, [])) != 1:
            raise OnnxImportError(f"{inner}: npconv follows only the Shape, Gather, Unsqueeze and Concat nodes "
                                  "of a flatten")
        self.visited.add(k)
        if node.op_type == "Shape":
            if node.input[0] != data:
                raise OnnxImportError(f"{inner}: the shape of another tensor than the one reshaped")
            if a.get("start", 0) != 0 or "end" in a:
                raise OnnxImportError(f"{inner}: a part of the shape")
            return ["N", *shape]
        if node.op_type == "Concat":
            return [v for part in node.input for v in self._shape_value(inner, part, shape, data, depth + 1)]
        value = self._shape_value(inner, node.input[0], shape, data, depth + 1)
        if node.op_type == "Cast":
            return value
        if node.op_type == "Gather":
            stored = self.constants.get(node.input[1]) if len(node.input) > 1 else None
            if a.get("axis", 0) != 0 or stored is None or stored.ndim > 1 or stored.dtype.kind not in "iu" or not all(
                    -len(value) <= i < len(value) for i in stored.reshape(-1)):
                raise OnnxImportError(f"{inner}: not a stored index into a shape")
            return [value[int(i)] for i in stored.reshape(-1)]
        # Unsqueeze and Squeeze of a one-number shape: the same number
        if len(value) != 1:
            raise OnnxImportError(f"{inner}: on {len(value)} numbers")
        return value


def _attributes(node):
    """A node's attributes as plain Python values (ints, floats, strings, lists of them)."""
    from onnx import helper

    out = {}
    for attribute in node.attribute:
        value = helper.get_attribute_value(attribute)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        elif isinstance(value, list):
            value = [int(v) if isinstance(v, int) else v for v in value]
        out[attribute.name] = value
    return out


def _symmetric(where, pads):
    """ONNX's ``[top, left, bottom, right]`` pads as npconv's ``[ph, pw]`` (npconv pads both sides alike)."""
    if len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3]:
        raise OnnxImportError(f"{where}: pads {pads} are not the same on both sides (npconv pads both alike)")
    return [pads[0], pads[1]]


def _describe(shape):
    return "x".join(str(s) for s in shape) + (" values" if len(shape) == 1 else " images")


def _constants(graph, visited):
    """Every stored tensor by name: the initializers, the outputs of ``Constant`` nodes, and of ``Identity``
    nodes of a stored tensor (PyTorch writes one for two equal tensors). Those nodes are marked ``visited``."""
    from onnx import helper, numpy_helper

    stored = {}

    def array(tensor, where):
        if tensor.data_location == 1 or tensor.external_data:  # 1: EXTERNAL
            raise OnnxImportError(f"{where}: its data is stored in another file; npconv reads one file only")
        if tensor.data_type in (0, 8):  # UNDEFINED, STRING
            raise OnnxImportError(f"{where}: not a tensor of numbers")
        try:
            return numpy_helper.to_array(tensor)
        except Exception as e:  # noqa: BLE001 - a damaged tensor: any failure of the converter means "damaged"
            raise OnnxImportError(f"{where}: a damaged tensor ({one_line(e)})") from None

    for tensor in graph.initializer:
        stored[tensor.name] = array(tensor, f"the initializer {tensor.name!r}")
    for k, node in enumerate(graph.node):
        where = f"node {node.name or '#' + str(k + 1)!r} ({node.op_type})"
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            if len(node.attribute) != 1 or len(node.output) != 1:
                raise OnnxImportError(f"{where}: not one stored value")
            attribute = node.attribute[0]
            if attribute.name == "value":
                value = array(attribute.t, where)
            elif attribute.name in ("value_float", "value_floats", "value_int", "value_ints"):
                value = np.asarray(helper.get_attribute_value(attribute),
                                   dtype=np.float32 if "float" in attribute.name else np.int64)
            else:
                raise OnnxImportError(f"{where}: a {attribute.name} constant, not numbers")
            stored[node.output[0]] = value
            visited.add(k)
        elif node.op_type == "Identity" and len(node.input) == 1 and node.input[0] in stored:
            stored[node.output[0]] = stored[node.input[0]]
            visited.add(k)
    return stored
