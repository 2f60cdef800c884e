"""Stochastic gradient descent with momentum and weight decay."""

from .. import backend as B
from .optimizer import Optimizer, _check, _check_lr


class SGD(Optimizer):
    """SGD with momentum and L2 weight decay -- exactly ``torch.optim.SGD``'s rule.

    For each parameter :math:`\\theta` with gradient :math:`g` at step :math:`t`:

    .. math::

        g &\\leftarrow g + \\lambda \\theta                 && \\text{weight decay}\\\\
        b_t &= \\mu \\, b_{t-1} + g, \\quad b_0 = 0          && \\text{momentum buffer}\\\\
        \\theta &\\leftarrow \\theta - \\eta \\, b_t

    with learning rate :math:`\\eta` = ``lr``, momentum :math:`\\mu` and weight
    decay :math:`\\lambda`. With :math:`\\mu = 0` this is plain SGD,
    :math:`\\theta \\leftarrow \\theta - \\eta (g + \\lambda\\theta)`. (PyTorch
    starts the buffer at :math:`b_1 = g`, which is the same thing.) Weight decay
    lives here and nowhere else: no layer or loss adds it.

    Parameters
    ----------
    params : iterable of Parameter
    lr : float > 0
    momentum : float in [0, 1)
    weight_decay : float >= 0
    """

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0):
        super().__init__(params)
        _check_lr(lr)
        _check("momentum", momentum, 0, 1, high_open=True)
        _check("weight_decay", weight_decay, 0, high_open=True)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.momentum_buffers = [B.xp.zeros_like(p.data) for p in self.params] if momentum else []

    def step(self):
        """Apply one update to every parameter from its current ``.grad``."""
        self.step_count += 1
        for i, p in enumerate(self.params):
            g = p.grad
            if self.weight_decay:
                g = g + self.weight_decay * p.data
            if self.momentum:
                buf = self.momentum_buffers[i]
                buf *= self.momentum
                buf += g
                g = buf
            p.data -= self.lr * g

    def _buffers(self):
        return {"momentum": self.momentum_buffers}
