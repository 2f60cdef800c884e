"""What the ONNX tests share: onnx and ONNX Runtime (required in CI), small models, the command line.

onnx and onnxruntime come with the ``[dev]`` extra; outside CI a test skips, saying why, when one is missing,
in CI (``CI=true``) it fails. (This folder is not called ``tests/onnx``: on the tests' import path a folder of
that name would stand in for the onnx package itself.)
"""

import subprocess
import sys

import numpy as np

from dependencies import require  # noqa: F401 (the ONNX tests import it from here)

from npconv.models import build_model, is_architecture_file, model_layers

#: MNIST's pixel statistics, the normalization the tests' models are given.
MEAN, STD = 0.1307, 0.3081


def run_cli(*args, cwd=None):
    """``python -m npconv ...`` in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "npconv", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def session(ort, path):
    """An ONNX Runtime session on one CPU thread."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def pixels(images):
    """uint8 images (N, 28, 28) as the exported graph takes them: float32 (N, 1, 28, 28) in [0, 1]."""
    return (images.astype(np.float32) / 255)[:, None]


def with_statistics(model, rng):
    """Give every batch norm layer non-trivial running statistics and affine parameters, and the output layer
    random weights (the presets start it at zero, which would make every comparison of logits vacuous)."""
    for layer in model:
        if hasattr(layer, "running_mean"):
            c = layer.num_features
            layer.running_mean.data[...] = rng.uniform(-0.5, 0.5, c)
            layer.running_var.data[...] = rng.uniform(0.5, 2.0, c)
            if getattr(layer, "weight", None) is not None:  # affine: learnable gamma and beta
                layer.weight.data[...] = rng.uniform(0.5, 1.5, c)
                layer.bias.data[...] = rng.uniform(-0.2, 0.2, c)
            layer.num_batches_tracked.data[...] = 7
    last = model[len(model) - 1]
    last.weight.data[...] = 0.1 * rng.standard_normal(last.weight.data.shape)
    last.bias.data[...] = 0.1 * rng.standard_normal(last.bias.data.shape)
    return model


#: An architecture file using every layer type npconv has (and strides, paddings, a non-square kernel).
EVERY_LAYER = [
    {"type": "conv2d", "out_channels": 6, "kernel_size": 3, "padding": 1},
    {"type": "batchnorm2d"},
    {"type": "relu"},
    {"type": "maxpool2d", "kernel_size": 2},
    {"type": "dropout", "p": 0.25},
    {"type": "conv2d", "out_channels": 8, "kernel_size": [3, 2], "stride": [1, 2], "padding": [1, 0]},
    {"type": "sigmoid"},
    {"type": "avgpool2d", "kernel_size": 3, "stride": 2, "padding": 1},
    {"type": "flatten"},
    {"type": "linear", "out_features": 24},
    {"type": "batchnorm1d", "eps": 1e-3, "momentum": 0.2},
    {"type": "tanh"},
    {"type": "linear", "out_features": 10},
]


def model_and_config(name, layers=None, dtype="float32", mean=MEAN, std=STD, seed=0):
    """An untrained model (non-trivial batch-norm statistics, random output layer) and the config its model file
    records."""
    model = with_statistics(build_model(name, layers=layers, rng=np.random.default_rng(seed), dtype=dtype),
                            np.random.default_rng(seed + 1))
    config = {"model": name, "dropout": 0.0, "dropout_at": "before-fc", "dtype": dtype,
              "model_layers": model_layers(name, layers, 10) if is_architecture_file(name) else None, "num_classes": 10,
              "classes": [str(i) for i in range(10)], "dataset": "mnist", "dataset_sha256": None,
              "normalize_mean": mean, "normalize_std": std}
    return model.eval(), config
