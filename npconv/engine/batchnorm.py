"""The batch-normalization kernel: :class:`~npconv.nn.BatchNorm2d`'s (and 1d's) math as row sums, in steps.

What it computes is the layer's (docs/math.md, section 20); how:

* each channel's ``M`` values are one row of a ``(C, M)`` matrix, so every sum is
  a sum along a row; for a batch-last image batch (a convolution kernel's output)
  that matrix is the array itself, without a copy, and the output is batch-last
  too. The sums are matrix-vector and dot products
  (:func:`~npconv.engine.products.row_sums`, :func:`~npconv.engine.products.row_dots`),
  which BLAS runs several times faster than NumPy's reductions (docs/performance.md);
* training-mode forward is three steps -- :meth:`BatchNormKernel.moments`,
  :func:`pooled`, :meth:`BatchNormKernel.normalize` -- and backward two --
  :meth:`~BatchNormKernel.gradient_sums`, :meth:`~BatchNormKernel.input_gradient`.
  On a whole batch they are the layer's formulas; a batch cut into chunks
  (:class:`~npconv.engine.parallel.DataParallel`) takes every step on every chunk
  and pools between them, so that each chunk is normalized with the statistics
  of the whole batch (docs/math.md, sections 18 and 20), as PyTorch's SyncBatchNorm does.
"""

from dataclasses import dataclass

from .. import backend as B
from .. import nn
from .kernels import Kernel
from .layout import batch_first, batch_last, is_batch_last
from .products import row_dots, row_sums


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
    mean plus ``m_k`` times the square of its offset (Chan, Golub & LeVeque, 1979).
    Each part's sum of squares is taken around its own mean, as the two-pass
    variance, never as a difference of large sums. The parts are added in the
    order given; for one part this is its own mean and ``squares / M``.
    """
    count = sum(part.count for part in parts)
    mean = sum(part.total for part in parts) / count
    squares = sum(part.squares + part.count * (part.total / part.count - mean) ** 2 for part in parts)
    return mean, squares / count


class BatchNormKernel(Kernel):
    """:class:`~npconv.nn.BatchNorm1d` or :class:`~npconv.nn.BatchNorm2d` the engine's way (module docstring).

    Cached by forward: ``xhat`` as a (C, M) matrix, ``gamma / sqrt(var + eps)``
    (C,), whether the batch's statistics were used (training mode) and the
    order of the matrix's columns (so that ``dy`` is laid out to match). Under
    ``no_grad()`` in evaluation mode nothing is kept and the output is computed
    as ``x * scale + shift`` per channel.
    """

    def _layout(self, x):
        """How ``x``'s values are laid out as the columns of the (C, M) matrix (see :meth:`_rows`)."""
        if isinstance(self.layer, nn.BatchNorm2d):
            return "batch-last" if is_batch_last(x) else "nchw"
        return None

    def _rows(self, a, layout):
        """``a`` as a (C, M) matrix, one row per channel, its columns in the order ``layout`` names
        (so that ``dy`` lines up with ``x``), and the function that gives a (C, M) result a's shape."""
        self.layer._check_shape(a)
        if a.ndim == 2:  # BatchNorm1d on (N, C)
            return a.T, lambda rows: rows.T
        if a.ndim == 3:  # BatchNorm1d on (N, C, L)
            n, c, length = a.shape
            rows = a.transpose(1, 0, 2).reshape(c, n * length)
            return rows, lambda rows: rows.reshape(c, n, length).transpose(1, 0, 2)
        n, c, h, w = a.shape
        if layout == "batch-last":  # stored (C, H, W, N): every channel is one contiguous run, no copy
            return batch_last(a).reshape(c, h * w * n), lambda rows: batch_first(rows.reshape(c, h, w, n))
        rows = a.transpose(1, 0, 2, 3).reshape(c, n * h * w)  # a copy, channel by channel
        return rows, lambda rows: rows.reshape(c, n, h, w).transpose(1, 0, 2, 3)

    def _gamma_beta(self):
        layer = self.layer
        if layer.affine:
            return self.weight.data, self.bias.data
        return (B.xp.ones(layer.num_features, dtype=layer.dtype),
                B.xp.zeros(layer.num_features, dtype=layer.dtype))

    def forward(self, x):
        layer, xp = self.layer, B.xp
        if layer.training:  # the three steps a split batch takes apart (see moments)
            moments = self.moments(x)
            mean, var = pooled([moments])
            self.track(mean, var, moments.count)
            return self.normalize(mean, var)
        x = xp.asarray(x, dtype=layer.dtype)
        layout = self._layout(x)
        rows, to_input_shape = self._rows(x, layout)
        inv_std = 1 / xp.sqrt(layer.running_var.data + layer.eps)
        if not nn.grad_enabled():  # inference: y = x * scale + shift per channel, two passes, nothing kept
            gamma, beta = self._gamma_beta()
            scale = gamma * inv_std
            y = rows * scale[:, None]
            y += (beta - layer.running_mean.data * scale)[:, None]
            self._save()
            return to_input_shape(y)
        x_hat = (rows - layer.running_mean.data[:, None]) * inv_std[:, None]
        return self._affine(x_hat, inv_std, False, layout, to_input_shape)

    # --- training mode, in steps: a batch cut into parts runs each step on every part -----
    def moments(self, x):
        """The first step of a training forward: the :class:`Moments` of the batch ``x``.

        Keeps ``x``'s deviations from its own mean for :meth:`normalize`.
        """
        x = B.xp.asarray(x, dtype=self.layer.dtype)
        layout = self._layout(x)
        rows, to_input_shape = self._rows(x, layout)
        total = row_sums(rows)
        own_mean = total / rows.shape[1]
        deviations = rows - own_mean[:, None]
        self._pending = (deviations, own_mean, layout, to_input_shape)
        return Moments(rows.shape[1], total, row_dots(deviations, deviations))

    def track(self, mean, var, count):
        """Move the layer's running estimates towards a batch's ``mean`` and biased ``var`` of ``count`` values:
        the layer's own update (:class:`npconv.nn.BatchNorm2d`), once per batch, however it was cut."""
        self.layer._update_running_stats(mean, var, count)

    def normalize(self, mean, var):
        """The last step of a training forward: normalize the batch :meth:`moments` saw with ``mean`` and ``var``."""
        if getattr(self, "_pending", None) is None:
            raise RuntimeError(f"{type(self.layer).__name__}: normalize() called before moments()")
        deviations, own_mean, layout, to_input_shape = self._pending
        self._pending = None
        shift = mean - own_mean  # zero when the statistics are the batch's own
        if shift.any():
            deviations -= shift[:, None]
        inv_std = 1 / B.xp.sqrt(var + self.layer.eps)
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
        if self.layer.affine:
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
