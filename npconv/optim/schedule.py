"""Learning-rate schedules: set ``optimizer.lr`` once per epoch.

A schedule only changes the learning rate between epochs; the optimizer's
update rule stays as its docstring states.
"""

import math

SCHEDULES = ("constant", "cosine")


def cosine_lr(base_lr, epoch, epochs):
    """Cosine annealing from ``base_lr`` towards 0 over ``epochs`` epochs, one value per epoch.

    .. math::  \\eta_e = \\frac{\\eta_0}{2} \\left(1 + \\cos \\frac{\\pi e}{E}\\right), \\qquad e = 0, 1, ..., E-1

    ``epoch`` counts from 1: the first epoch runs at ``base_lr``, the last at
    ``base_lr * sin^2(pi / 2E)`` (small, not 0). This is
    ``torch.optim.lr_scheduler.CosineAnnealingLR(T_max=E)`` stepped once per epoch.
    """
    return base_lr * (1 + math.cos(math.pi * (epoch - 1) / epochs)) / 2


def lr_at(schedule, base_lr, epoch, epochs):
    """The learning rate of ``epoch`` (from 1) under ``schedule`` ("constant" or "cosine")."""
    if schedule == "constant":
        return base_lr
    if schedule == "cosine":
        return cosine_lr(base_lr, epoch, epochs)
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
