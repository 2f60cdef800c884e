"""Adam: adaptive moment estimation."""

from .. import backend as B
from .optimizer import Optimizer, _check, _check_lr


class Adam(Optimizer):
    """Adam with L2 weight decay -- exactly ``torch.optim.Adam``'s rule.

    For each parameter :math:`\\theta` with gradient :math:`g` at step :math:`t = 1, 2, ...`:

    .. math::

        g &\\leftarrow g + \\lambda \\theta \\\\
        m_t &= \\beta_1 m_{t-1} + (1 - \\beta_1) g, \\qquad m_0 = 0 \\\\
        v_t &= \\beta_2 v_{t-1} + (1 - \\beta_2) g^2, \\qquad v_0 = 0 \\\\
        \\theta &\\leftarrow \\theta - \\frac{\\eta}{1 - \\beta_1^t} \\cdot
                  \\frac{m_t}{\\sqrt{v_t} / \\sqrt{1 - \\beta_2^t} + \\epsilon}

    The two divisions by :math:`1 - \\beta^t` undo the bias of the zero
    initial moments. Weight decay here is L2 added to the gradient (PyTorch's
    ``Adam``, not the decoupled ``AdamW``).

    Parameters
    ----------
    params : iterable of Parameter
    lr : float > 0, default 1e-3
    betas : (float, float) in [0, 1), default (0.9, 0.999)
    eps : float >= 0, default 1e-8
    weight_decay : float >= 0
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params)
        _check_lr(lr)
        _check("betas[0]", betas[0], 0, 1, high_open=True)
        _check("betas[1]", betas[1], 0, 1, high_open=True)
        _check("eps", eps, 0, high_open=True)
        _check("weight_decay", weight_decay, 0, high_open=True)
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay
        self.exp_avg = [B.xp.zeros_like(p.data) for p in self.params]
        self.exp_avg_sq = [B.xp.zeros_like(p.data) for p in self.params]

    def step(self):
        """Apply one update to every parameter from its current ``.grad``."""
        xp = B.xp
        self.step_count += 1
        t = self.step_count
        beta1, beta2 = self.betas
        bias_correction1 = 1 - beta1**t
        bias_correction2_sqrt = (1 - beta2**t) ** 0.5
        step_size = self.lr / bias_correction1
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq):
            g = p.grad
            if self.weight_decay:
                g = g + self.weight_decay * p.data
            m *= beta1
            m += (1 - beta1) * g
            v *= beta2
            v += (1 - beta2) * g * g
            denom = xp.sqrt(v) / bias_correction2_sqrt + self.eps
            p.data -= step_size * (m / denom)

    def _buffers(self):
        return {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}
