"""``npconv export`` and ``npconv import``: models to and from ONNX (:mod:`npconv.onnx`)."""

import argparse
import math
import sys

from ..onnx.export import FORMATS


def _number(text):
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def add_commands(sub):
    e = sub.add_parser(
        "export", help="write a model as an ONNX graph (for ONNX Runtime, Netron, other frameworks)",
        description="Write a model file, or a run folder's model, as an ONNX graph that takes float32 pixels in "
                    "[0, 1], shape (N, 1, 28, 28), and gives the logits (N, classes); the input normalization is "
                    'inside the graph. Needs the onnx extra: pip install "npconv[onnx]".')
    e.add_argument("source", metavar="RUN_DIR|MODEL.npz")
    e.add_argument("--format", choices=FORMATS, default="onnx", help="default: %(default)s")
    e.add_argument("--out", required=True, metavar="FILE.onnx", help="the file to write")

    i = sub.add_parser(
        "import", help="turn an ONNX chain of layers (e.g. from torch.onnx.export) into an npconv model file",
        description="Turn an ONNX graph made of layers npconv has, in one chain (as torch.onnx.export writes a "
                    "torch.nn.Sequential), into a model.npz for evaluate, predict and serve. It imports Conv, Gemm, "
                    "MatMul (+ Add), Relu, Sigmoid, Tanh, MaxPool, AveragePool, GlobalMaxPool, GlobalAveragePool, "
                    "BatchNormalization, Flatten, a Reshape that flattens, Identity, Dropout, and a Sub and Div "
                    "first (the input normalization); see docs/onnx.md. Needs the onnx extra: "
                    'pip install "npconv[onnx]".')
    i.add_argument("onnx_file", metavar="FILE.onnx")
    i.add_argument("--out", required=True, metavar="FILE.npz", help="the model file to write")
    i.add_argument("--mean", type=_number, metavar="M",
                   help="the input normalization the model expects, (pixels - M) / S with pixels in [0, 1], when "
                        "the graph does not do it itself (MNIST's: 0.1307)")
    i.add_argument("--std", type=_number, metavar="S", help="see --mean (MNIST's: 0.3081)")


def cmd_export(args):
    from ..onnx.export import export_onnx

    for note in export_onnx(args.source, args.out):
        print(f"npconv: note: {note}", file=sys.stderr)
    print(f"wrote {args.out}")


def cmd_import(args):
    from ..onnx.importer import import_onnx

    for note in import_onnx(args.onnx_file, args.out, mean=args.mean, std=args.std):
        print(f"npconv: note: {note}", file=sys.stderr)
    print(f"wrote {args.out}")


COMMANDS = {"export": cmd_export, "import": cmd_import}
