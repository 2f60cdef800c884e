"""ONNX: npconv models out to the rest of the field, and simple networks from it in.

* :func:`npconv.onnx.export.export_onnx` writes a model file (or a run's) as an ONNX graph that takes raw pixels
  in [0, 1] and gives the logits, with the input normalization inside the graph (``npconv export``);
* :func:`npconv.onnx.importer.import_onnx` turns an ONNX chain of layers npconv has -- as ``torch.onnx.export``
  writes a ``torch.nn.Sequential``, or as npconv's own export writes it -- into an npconv ``model.npz``
  (``npconv import``).

The ``onnx`` package is an optional extra (``pip install "npconv[onnx]"``), imported only when one of them
runs, so ``import npconv`` never needs it. What the graphs look like, and the rules of the import, are in
``docs/onnx.md``.
"""

import importlib

from ..errors import NpconvError

#: The ONNX operator set npconv writes (one every current ONNX Runtime runs), and the IR version that goes with it.
OPSET = 17
IR_VERSION = 8
#: Names of the exported graph's input and output.
INPUT_NAME = "pixels"
OUTPUT_NAME = "logits"
#: The exported graph's metadata (``metadata_props``): what a client needs beside the graph. ``classes`` and the
#: two normalization values are JSON (a list of strings; a number or null), the others plain text.
METADATA_KEYS = ("classes", "dataset", "npconv_version", "normalize_mean", "normalize_std", "model")


def require_onnx():
    """The ``onnx`` module, or a one-line :class:`~npconv.errors.NpconvError` naming the extra to install."""
    try:
        return importlib.import_module("onnx")
    except ImportError:
        raise NpconvError('ONNX export and import need the onnx package: pip install "npconv[onnx]"') from None
