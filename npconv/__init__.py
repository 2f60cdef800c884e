"""npconv: a from-scratch NumPy deep-learning toolkit for image classification.

Every layer, loss and optimizer is written by hand, forward and backward. The
package, in dependency order (each imports only what is above it in this list):

* :mod:`npconv.backend`, :mod:`npconv.errors`, :mod:`npconv.text` -- the array seam (NumPy, or CuPy on a GPU),
  the user-error types, lines within 100 columns;
* :mod:`npconv.nn` -- layers and losses (one concept per file), gradient checking;
* :mod:`npconv.optim` -- SGD, Adam, learning-rate schedules;
* :mod:`npconv.data` -- the IDX reader, MNIST / Fashion-MNIST, mini-batches, image files made like MNIST's;
* :mod:`npconv.io` -- atomic writes, folder locks, the untrusting npz reader;
* :mod:`npconv.models` -- the presets (``cnn``, ``mlp``, ``lenet5``, ``cnn-bn``) and model files;
  :mod:`npconv.engine` -- runs a model of nn layers fast (kernels, chunks, threads), the same math;
* :mod:`npconv.train` -- one run: settings, the loop, health, checkpoints, model files, the run folder;
* :mod:`npconv.inference` -- using a trained model: classify images, evaluate a model file;
* :mod:`npconv.experiments` -- sweeps, studies and their reports, comparisons;
* :mod:`npconv.onnx` -- models to and from ONNX (the ``onnx`` package, an optional extra, loaded on use);
* :mod:`npconv.cli`, :mod:`npconv.serve` -- the ``npconv`` command, and its local web page.

The names below are the ones a user needs first; they are imported on first
use, so ``import npconv.nn`` pulls in nothing but NumPy.
"""

import importlib

__version__ = "0.3.0"

_EXPORTS = {
    "TrainConfig": "npconv.train",
    "run_training": "npconv.train",
    "resume_training": "npconv.train",
    "save_model": "npconv.train",
    "load_model": "npconv.train",
    "classify": "npconv.inference",
    "Classifier": "npconv.inference",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'npconv' has no attribute {name!r}")
