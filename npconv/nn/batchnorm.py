"""Batch normalization: ``BatchNorm1d`` (features) and ``BatchNorm2d`` (channels of images)."""

from dataclasses import dataclass

import numpy as np

from .. import backend as B
from ._utils import batch_first, batch_last, is_batch_last, row_dots, row_sums
from .module import Buffer, Module, Parameter, grad_enabled


@dataclass
class Moments:
    """A batch's statistics per channel, as sums that add up over parts of a batch.

    ``count`` values per channel, their ``total`` (C,), and ``squares`` (C,): the
    sum of their squared deviations from their own mean. :func:`pooled` gives the
    statistics of several parts' values together.
    """

    count: int
    total: object
    squares: object


def pooled(parts):
    """The mean and the biased variance (each (C,)) of all the values of ``parts`` (a list of :class:`Moments`).

    With ``M = sum_k m_k`` values in all, and part ``k``'s own mean ``mu_k = total_k / m_k``::

        mean = sum_k total_k / M
        var  = sum_k (squares_k + m_k (mu_k - mean)^2) / M

    the squared deviations from the common mean being those from each part's own
    mean plus ``m_k`` times the square of its offset (Chan, Golub & LeVeque, 1979;
    PyTorch's SyncBatchNorm pools its devices' statistics the same way). Each
    part's sum of squares is taken around its own mean, as the two-pass variance,
    never as a difference of large sums. The parts are added in the order given;
    for one part this is its own mean and ``squares / M``.
    """
    count = sum(part.count for part in parts)
    mean = sum(part.total for part in parts) / count
    squares = sum(part.squares + part.count * (part.total / part.count - mean) ** 2 for part in parts)
    return mean, squares / count


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

    Implementation: each channel's ``M`` values are laid out as one row of a
    ``(C, M)`` matrix, so every sum above is a sum along a row. For a batch-last
    image batch (a Conv2d output, see :mod:`npconv.nn.conv`) that matrix is the
    array itself, without a copy, and the output is batch-last too. The sums are
    computed as matrix-vector and dot products (:func:`~npconv.nn._utils.row_sums`,
    :func:`~npconv.nn._utils.row_dots`), which BLAS runs several times faster than
    NumPy's reductions; a training step of the first BatchNorm2d of ``cnn-bn`` (16
    channels, M = 78,400) went from 2.7 ms to 1.5 ms on one core.

    Training-mode forward is written as three steps -- :meth:`moments`,
    :func:`pooled`, :meth:`normalize` -- and backward as two --
    :meth:`gradient_sums`, :meth:`input_gradient`: on a whole batch they are the
    formulas above, bit for bit; a batch cut into chunks
    (:class:`~npconv.train.parallel.DataParallel`) takes every step on every chunk
    and pools between them, so that each chunk is normalized with the statistics
    of the whole batch (docs/math.md, sections 18 and 20).

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

    Cached by forward: ``xhat`` as a (C, M) matrix, ``gamma / sqrt(var + eps)``
    (C,), whether the batch's statistics were used (training mode) and the
    order of the matrix's columns (so that ``dy`` is laid out to match). Under
    ``no_grad()`` in evaluation mode nothing is kept and the output is computed
    as ``x * scale + shift`` per channel.
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

    def _layout(self, x):
        """How ``x``'s values are laid out as the columns of the (C, M) matrix (see :meth:`_rows`)."""
        return None

    def _rows(self, a, layout):
        """``a`` as a (C, M) matrix, one row per channel, its columns in the order ``layout`` names
        (so that ``dy`` lines up with ``x``), and the function that gives a (C, M) result a's shape."""
        raise NotImplementedError

    def _gamma_beta(self):
        if self.affine:
            return self.weight.data, self.bias.data
        return B.xp.ones(self.num_features, dtype=self.dtype), B.xp.zeros(self.num_features, dtype=self.dtype)

    def forward(self, x):
        if self.training:  # the three steps a split batch takes apart (see moments)
            moments = self.moments(x)
            mean, var = pooled([moments])
            self.track(mean, var, moments.count)
            return self.normalize(mean, var)
        xp = B.xp
        x = xp.asarray(x, dtype=self.dtype)
        layout = self._layout(x)
        rows, to_input_shape = self._rows(x, layout)
        inv_std = 1 / xp.sqrt(self.running_var.data + self.eps)
        if not grad_enabled():  # inference: y = x * scale + shift per channel, two passes, nothing kept
            gamma, beta = self._gamma_beta()
            scale = gamma * inv_std
            y = rows * scale[:, None]
            y += (beta - self.running_mean.data * scale)[:, None]
            self._save()
            return to_input_shape(y)
        x_hat = (rows - self.running_mean.data[:, None]) * inv_std[:, None]
        return self._affine(x_hat, inv_std, False, layout, to_input_shape)

    # --- training mode, in steps: a batch cut into parts runs each step on every part -----
    def moments(self, x):
        """The first step of a training forward: the :class:`Moments` of the batch ``x``.

        Keeps ``x``'s deviations from its own mean for :meth:`normalize`. Where a
        batch is cut into parts (:class:`~npconv.train.parallel.DataParallel`),
        every part's layer takes this step, :func:`pooled` gives the whole batch's
        statistics, and every part's layer normalizes with them.
        """
        x = B.xp.asarray(x, dtype=self.dtype)
        layout = self._layout(x)
        rows, to_input_shape = self._rows(x, layout)
        total = row_sums(rows)
        own_mean = total / rows.shape[1]
        deviations = rows - own_mean[:, None]
        self._pending = (deviations, own_mean, layout, to_input_shape)
        return Moments(rows.shape[1], total, row_dots(deviations, deviations))

    def track(self, mean, var, count):
        """Move the running estimates towards a batch's ``mean`` and biased ``var`` of ``count`` values."""
        if count < 2:
            raise ValueError(f"{type(self).__name__} in training mode needs more than one value per channel, "
                             f"got a batch of {count}")
        self.num_batches_tracked.data += 1
        factor = 1 / int(self.num_batches_tracked.data) if self.momentum is None else self.momentum
        unbiased_var = var * (count / (count - 1))  # the running estimate uses the unbiased variance
        for buffer, value in ((self.running_mean, mean), (self.running_var, unbiased_var)):
            buffer.data *= 1 - factor
            buffer.data += factor * value

    def normalize(self, mean, var):
        """The last step of a training forward: normalize the batch :meth:`moments` saw with ``mean`` and ``var``."""
        if getattr(self, "_pending", None) is None:
            raise RuntimeError(f"{type(self).__name__}.normalize() called before moments()")
        deviations, own_mean, layout, to_input_shape = self._pending
        self._pending = None
        shift = mean - own_mean  # zero when the statistics are the batch's own
        if shift.any():
            deviations -= shift[:, None]
        inv_std = 1 / B.xp.sqrt(var + self.eps)
        deviations *= inv_std[:, None]  # now x_hat
        return self._affine(deviations, inv_std, True, layout, to_input_shape)

    def _affine(self, x_hat, inv_std, batch_statistics, layout, to_input_shape):
        """``y = gamma * x_hat + beta``; keep what backward needs."""
        gamma, beta = self._gamma_beta()
        y = x_hat * gamma[:, None]
        y += beta[:, None]
        self._save(x_hat, gamma * inv_std, batch_statistics, layout)
        return to_input_shape(y)

    def backward(self, dy, input_grad=True):
        """Fill ``weight.grad`` and ``bias.grad`` (if ``affine``); return ``dx`` (or None if not ``input_grad``)."""
        dy_rows, to_input_shape = self._dy_rows(dy)  # laid out once for both steps
        sums = self._gradient_sums(dy_rows)
        return self._input_gradient(dy_rows, to_input_shape, sums) if input_grad else None

    def gradient_sums(self, dy):
        """The first step of backward: ``(dbeta, dgamma)`` of this batch, added to ``bias.grad`` and ``weight.grad``.

        For a batch cut into parts, the whole batch's sums are the parts' sums
        added up, and :meth:`input_gradient` takes those.
        """
        dy_rows, _ = self._dy_rows(dy)
        return self._gradient_sums(dy_rows)

    def input_gradient(self, dy, sums, count=None):
        """The last step of backward: ``dx``, given ``dy`` and the ``sums`` (dbeta, dgamma) of the whole batch.

        ``count`` is the number of values per channel in the whole batch (by
        default this batch's own, when it is the whole batch).
        """
        dy_rows, to_input_shape = self._dy_rows(dy)
        return self._input_gradient(dy_rows, to_input_shape, sums, count)

    def _dy_rows(self, dy):
        """``dy`` as a (C, M) matrix with its columns in the order of the saved ``x_hat``, and the way back."""
        _, _, _, layout = self._saved_tensors()
        return self._rows(dy, layout)

    def _gradient_sums(self, dy_rows):
        x_hat, _, _, _ = self._saved_tensors()
        dbeta = row_sums(dy_rows)
        dgamma = row_dots(dy_rows, x_hat)
        if self.affine:
            self.bias.grad += dbeta
            self.weight.grad += dgamma
        return dbeta, dgamma

    def _input_gradient(self, dy_rows, to_input_shape, sums, count=None):
        x_hat, scale, batch_statistics, _ = self._saved_tensors()
        if not batch_statistics:  # evaluation mode: mean and variance are constants
            return to_input_shape(dy_rows * scale[:, None])
        dbeta, dgamma = sums
        m = x_hat.shape[1] if count is None else count
        dx = x_hat * (-dgamma / m)[:, None]
        dx += dy_rows
        dx -= (dbeta / m)[:, None]
        dx *= scale[:, None]
        return to_input_shape(dx)

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

    def _rows(self, a, layout):
        if a.ndim not in (2, 3) or a.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm1d({self.num_features}) expects input (N, {self.num_features}) or "
                             f"(N, {self.num_features}, L), got {a.shape}")
        if a.ndim == 2:
            return a.T, lambda rows: rows.T
        n, c, length = a.shape
        rows = a.transpose(1, 0, 2).reshape(c, n * length)
        return rows, lambda rows: rows.reshape(c, n, length).transpose(1, 0, 2)


class BatchNorm2d(_BatchNorm):
    """Batch normalization of image channels: statistics over the batch and every pixel, one per channel.

    See :class:`_BatchNorm` for the math, the parameters and the buffers.

    Shape
    -----
    x : (N, C, H, W) -> y : (N, C, H, W); each channel's statistics are over
    N, H and W (M = N*H*W).
    """

    def _layout(self, x):
        return "batch-last" if is_batch_last(x) else "nchw"

    def _rows(self, a, layout):
        """Columns ordered (h, w, n) for a batch-last ``x`` (a Conv2d's output), else (n, h, w)."""
        if a.ndim != 4 or a.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm2d({self.num_features}) expects input (N, {self.num_features}, H, W), "
                             f"got {a.shape}")
        n, c, h, w = a.shape
        if layout == "batch-last":  # stored (C, H, W, N): every channel is one contiguous run, no copy
            return batch_last(a).reshape(c, h * w * n), lambda rows: batch_first(rows.reshape(c, h, w, n))
        rows = a.transpose(1, 0, 2, 3).reshape(c, n * h * w)  # a copy, channel by channel
        return rows, lambda rows: rows.reshape(c, n, h, w).transpose(1, 0, 2, 3)
