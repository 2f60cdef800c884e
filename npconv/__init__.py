"""npconv: a from-scratch NumPy deep-learning toolkit for image classification.

Every layer, loss and optimizer is written by hand, forward and backward:

* :mod:`npconv.nn` -- layers and losses (one concept per file);
* :mod:`npconv.optim` -- SGD and Adam;
* :mod:`npconv.data` -- the IDX reader, MNIST / Fashion-MNIST, mini-batches;
* :mod:`npconv.models` -- the study's ``cnn`` and ``mlp``;
* :mod:`npconv.training` -- the training loop and evaluation;
* :mod:`npconv.run` -- ``npconv train`` as a function: a config in, a run folder out;
* :mod:`npconv.cli` -- the ``npconv`` command.
"""

__version__ = "0.1.0"
