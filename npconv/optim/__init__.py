"""Optimizers, in order of complexity: ``SGD`` (with momentum) and ``Adam``.

They are the only code that changes weights; weight decay lives here too.
"""

from .adam import Adam
from .optimizer import Optimizer
from .sgd import SGD

__all__ = ["Adam", "Optimizer", "SGD"]
