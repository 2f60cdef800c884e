"""Batch normalization: ``BatchNorm1d`` (features) and ``BatchNorm2d`` (channels of images)."""

import numpy as np

from .. import backend as B
from .module import Buffer, Module, Parameter


class _BatchNorm(Module):
    """Batch normalization (Ioffe & Szegedy, 2015) with PyTorch's semantics; see the subclasses.

    Every channel (feature) ``c`` is normalized on its own. In **training
    mode**, over the ``M`` values :math:`x_1 .. x_M` the channel has in the
    batch (``M = N`` for BatchNorm1d on (N, C), ``N*H*W`` for BatchNorm2d):

    .. math::

        \\mu = \\frac{1}{M} \\sum_i x_i, \\qquad
        \\sigma^2 = \\frac{1}{M} \\sum_i (x_i - \\mu)^2, \\qquad
        \\hat x_i = \\frac{x_i - \\mu}{\\sqrt{\\sigma^2 + \\epsilon}}, \\qquad
        y_i = \\gamma \\hat x_i + \\beta

    with the *biased* variance :math:`\\sigma^2`, and the running estimates
    move towards the batch's, with the *unbiased* variance::

        running_mean = (1 - momentum) * running_mean + momentum * mu
        running_var  = (1 - momentum) * running_var  + momentum * sigma^2 * M / (M - 1)
        num_batches_tracked += 1

    (``momentum=None``: a plain average of every batch so far, the factor
    being ``1 / num_batches_tracked``.) In **evaluation mode** the running
    estimates stand in for the batch's:
    :math:`y = \\gamma (x - \\text{running\\_mean}) / \\sqrt{\\text{running\\_var} + \\epsilon} + \\beta`.

    Backward, per channel, given ``dy`` (derived in docs/math.md, section 20)::

        dbeta  = sum_i dy_i
        dgamma = sum_i dy_i * xhat_i
        dx_i   = gamma / sqrt(sigma^2 + eps) * (dy_i - dbeta / M - xhat_i * dgamma / M)     (training)
        dx_i   = gamma / sqrt(running_var + eps) * dy_i                                     (evaluation)

    The two subtracted terms are the gradient that flows through mu and
    sigma^2: every output of the channel depends on every input of it.

    Parameters
    ----------
    num_features : int -- C
    eps : float -- added to the variance, 1e-5
    momentum : float in [0, 1] or None -- 0.1
    affine : bool -- learn ``gamma`` and ``beta`` (else gamma = 1, beta = 0, no parameters)
    dtype : float32 (default) or float64

    Attributes
    ----------
    weight : Parameter (C,) -- gamma, ones
    bias : Parameter (C,) -- beta, zeros
    running_mean : Buffer (C,) -- zeros
    running_var : Buffer (C,) -- ones
    num_batches_tracked : Buffer () int64 -- 0

    Cached by forward: ``xhat`` (the input's shape), ``gamma / sqrt(var + eps)``
    (C,) and whether the batch's statistics were used (training mode).
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, *, dtype=None):
        if not 0 < eps < float("inf"):
            raise ValueError(f"eps must be a finite number > 0, got {eps}")
        if momentum is not None and not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be in [0, 1] or None, got {momentum}")
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.dtype = B.resolve_dtype(dtype)
        xp = B.xp
        if affine:
            self.weight = Parameter(xp.ones(num_features, dtype=self.dtype))
            self.bias = Parameter(xp.zeros(num_features, dtype=self.dtype))
        self.running_mean = Buffer(xp.zeros(num_features, dtype=self.dtype))
        self.running_var = Buffer(xp.ones(num_features, dtype=self.dtype))
        self.num_batches_tracked = Buffer(xp.zeros((), dtype=np.int64))  # a 0-d int64, as PyTorch's

    def _stats_axes(self, x):
        """The axes a channel's statistics are taken over: every axis but the channel axis 1."""
        return (0, *range(2, x.ndim))

    def _per_channel(self, v, x):
        """A (C,) vector shaped to broadcast along ``x``'s channel axis: (1, C, 1, ...)."""
        return v.reshape(1, -1, *([1] * (x.ndim - 2)))

    def _check_shape(self, x):
        raise NotImplementedError

    def _gamma_beta(self):
        if self.affine:
            return self.weight.data, self.bias.data
        return B.xp.ones(self.num_features, dtype=self.dtype), B.xp.zeros(self.num_features, dtype=self.dtype)

    def forward(self, x):
        xp = B.xp
        x = xp.asarray(x, dtype=self.dtype)
        self._check_shape(x)
        axes = self._stats_axes(x)
        if self.training:
            mean = x.mean(axis=axes)
            var = ((x - self._per_channel(mean, x)) ** 2).mean(axis=axes)  # biased: divided by M
            self._update_running_stats(mean, var, x.size // self.num_features)
        else:
            mean, var = self.running_mean.data, self.running_var.data
        inv_std = 1 / xp.sqrt(var + self.eps)
        x_hat = (x - self._per_channel(mean, x)) * self._per_channel(inv_std, x)
        gamma, beta = self._gamma_beta()
        self._save(x_hat, gamma * inv_std, self.training)
        return x_hat * self._per_channel(gamma, x) + self._per_channel(beta, x)

    def _update_running_stats(self, mean, var, count):
        """Move the running estimates towards the batch's ``mean`` and biased ``var`` of ``count`` values."""
        if count < 2:
            raise ValueError(f"{type(self).__name__} in training mode needs more than one value per channel, "
                             f"got a batch of {count}")
        self.num_batches_tracked.data += 1
        factor = 1 / int(self.num_batches_tracked.data) if self.momentum is None else self.momentum
        unbiased_var = var * (count / (count - 1))  # the running estimate uses the unbiased variance
        self.running_mean.data[...] = (1 - factor) * self.running_mean.data + factor * mean
        self.running_var.data[...] = (1 - factor) * self.running_var.data + factor * unbiased_var

    def backward(self, dy, input_grad=True):
        """Fill ``weight.grad`` and ``bias.grad`` (if ``affine``); return ``dx`` (or None if not ``input_grad``)."""
        x_hat, scale, batch_statistics = self._saved_tensors()
        axes = self._stats_axes(dy)
        dbeta = dy.sum(axis=axes)
        dgamma = (dy * x_hat).sum(axis=axes)
        if self.affine:
            self.bias.grad += dbeta
            self.weight.grad += dgamma
        if not input_grad:
            return None
        if not batch_statistics:  # evaluation mode: mean and variance are constants
            return dy * self._per_channel(scale, dy)
        m = dy.size // self.num_features
        return self._per_channel(scale, dy) * (
            dy - self._per_channel(dbeta / m, dy) - x_hat * self._per_channel(dgamma / m, dy))

    def check_state(self, prefix):
        """Running statistics loaded from a file must be finite, the variance >= 0, the count >= 0."""
        if not B.xp.isfinite(self.running_mean.data).all():
            raise ValueError(f"{prefix}running_mean holds a value that is not finite")
        var = self.running_var.data
        if not (B.xp.isfinite(var).all() and (var >= 0).all()):
            raise ValueError(f"{prefix}running_var must hold finite values >= 0")
        if int(self.num_batches_tracked.data) < 0:
            raise ValueError(f"{prefix}num_batches_tracked must be >= 0, got {int(self.num_batches_tracked.data)}")

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"


class BatchNorm1d(_BatchNorm):
    """Batch normalization of features: statistics over the batch, one per feature.

    See :class:`_BatchNorm` for the math, the parameters and the buffers.

    Shape
    -----
    x : (N, C) or (N, C, L) -> y : the same shape; for (N, C, L) each channel's
    statistics are over N and L (M = N*L), as in PyTorch.
    """

    def _check_shape(self, x):
        if x.ndim not in (2, 3) or x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm1d({self.num_features}) expects input (N, {self.num_features}) or "
                             f"(N, {self.num_features}, L), got {x.shape}")


class BatchNorm2d(_BatchNorm):
    """Batch normalization of image channels: statistics over the batch and every pixel, one per channel.

    See :class:`_BatchNorm` for the math, the parameters and the buffers.

    Shape
    -----
    x : (N, C, H, W) -> y : (N, C, H, W); each channel's statistics are over
    N, H and W (M = N*H*W).
    """

    def _check_shape(self, x):
        if x.ndim != 4 or x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm2d({self.num_features}) expects input (N, {self.num_features}, H, W), "
                             f"got {x.shape}")
