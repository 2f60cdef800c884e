"""Layers and losses, each written by hand, forward and backward: the textbook.

Each layer is its formula in NCHW, forward and backward, and runs as it reads
(:mod:`npconv.engine` runs the same layers fast, and nothing here knows of it).
One concept per file, in dependency order:

========================  ====================================================
``module.py``             ``Parameter``, ``Buffer``, ``Module``: the forward/backward contract
``init.py``               He-uniform (and Gaussian) initialization
``linear.py``             ``Linear``
``activation.py``         ``ReLU``, ``Sigmoid``, ``Tanh``
``conv.py``               ``Conv2d`` (im2col)
``pool.py``               ``MaxPool2d``
``avgpool.py``            ``AvgPool2d``
``batchnorm.py``          ``BatchNorm1d``, ``BatchNorm2d``
``dropout.py``            ``Dropout``
``flatten.py``            ``Flatten``
``container.py``          ``Sequential``
``loss.py``               ``SoftmaxCrossEntropyLoss``, ``MSELoss``
``reference.py``          the loop versions of conv, pooling and batch norm, to read beside them
========================  ====================================================
"""

from .activation import ReLU, Sigmoid, Tanh
from .avgpool import AvgPool2d
from .batchnorm import BatchNorm1d, BatchNorm2d
from .container import Sequential
from .conv import Conv2d
from .dropout import Dropout
from .flatten import Flatten
from .linear import Linear
from .loss import MSELoss, SoftmaxCrossEntropyLoss
from .module import Buffer, Module, Parameter, grad_enabled, no_grad
from .pool import MaxPool2d

__all__ = [
    "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "Buffer", "Conv2d", "Dropout", "Flatten", "Linear", "MaxPool2d",
    "MSELoss", "Module", "Parameter", "ReLU", "Sequential", "Sigmoid", "SoftmaxCrossEntropyLoss", "Tanh",
    "grad_enabled", "no_grad",
]
