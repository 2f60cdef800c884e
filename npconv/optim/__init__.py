"""Optimizers, in order of complexity: ``SGD`` (with momentum) and ``Adam``.

They are the only code that changes weights; weight decay lives here too.
``schedule.py`` sets the learning rate of each epoch.
"""

from .adam import Adam
from .optimizer import Optimizer
from .schedule import SCHEDULES, cosine_lr, lr_at
from .sgd import SGD

#: The optimizers by name, as a training run's ``optimizer`` setting names them.
OPTIMIZERS = ("sgd", "adam")

__all__ = ["Adam", "OPTIMIZERS", "Optimizer", "SCHEDULES", "SGD", "cosine_lr", "lr_at"]
