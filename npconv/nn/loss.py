"""Losses: softmax cross-entropy and mean squared error.

A loss is called as ``loss(output, target) -> float`` and keeps what its
gradient needs; ``loss.backward()`` then returns ``d(loss)/d(output)``, the
``dy`` that starts the network's backward pass.
"""

from .. import backend as B
from .module import Module


def _check_labels(labels, n, num_classes):
    """Labels as an array of the backend; their range is checked on the host only.

    On a device the check would wait for the GPU at every step: the training
    run checks its labels once, when the data is loaded.
    """
    xp = B.xp
    labels = xp.asarray(labels)
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be {n} integer class indices, got shape {labels.shape} dtype {labels.dtype}")
    if B.on_host() and labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    return labels


def log_softmax(logits):
    """Row-wise :math:`\\log p = z - \\log\\sum_j e^{z_j}`, stable for any logits.

    The row maximum :math:`m` is subtracted first:
    :math:`\\log\\sum_j e^{z_j} = m + \\log\\sum_j e^{z_j - m}`, so every ``exp``
    sees a value <= 0 and cannot overflow. Shape (N, K) -> (N, K).
    """
    xp = B.xp
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))


def softmax(logits):
    """Row-wise class probabilities :math:`p = e^{z} / \\sum_j e^{z_j}`, (N, K) -> (N, K)."""
    return B.xp.exp(log_softmax(logits))


REDUCTIONS = ("mean", "sum")


def naive_log_softmax(logits):
    """:math:`\\log p = \\log(e^{z} / \\sum_j e^{z_j})` as the formula reads, without subtracting the maximum.

    What many from-scratch codes write. ``exp`` overflows for logits above
    about 88.7 in float32 (709.8 in float64): the sum becomes ``inf`` and
    ``p`` becomes ``inf / inf = nan``. Kept only to show (and measure) that
    failure; use :func:`log_softmax`.
    """
    xp = B.xp
    exp = xp.exp(logits)
    return xp.log(exp / exp.sum(axis=1, keepdims=True))


class SoftmaxCrossEntropyLoss(Module):
    """Softmax followed by cross-entropy, fused, averaged (or summed) over the batch.

    For logits :math:`z` (N, K) and integer labels :math:`t` (N,):

    .. math::

        \\log p_{nk} = z_{nk} - \\log \\sum_j e^{z_{nj}}, \\qquad
        L = -\\frac{1}{N} \\sum_n \\log p_{n t_n}

    The log-sum-exp is computed after subtracting each row's maximum (see
    :func:`log_softmax`), so no ``exp`` overflows even for logits of ±1000.
    The gradient is

    .. math::  \\frac{\\partial L}{\\partial z} = (p - \\text{onehot}(t)) / N

    This is ``torch.nn.CrossEntropyLoss()`` with its default mean reduction;
    ``reduction="sum"`` drops the :math:`1/N` from the loss and the gradient.

    Parameters
    ----------
    reduction : ``"mean"`` (default) or ``"sum"``
        As PyTorch's: with ``"sum"`` the loss and its gradient are N times
        larger, so the step an optimizer takes grows with the batch size.
    stable : bool
        Subtract the row maximum (default). ``False`` computes the softmax as
        the formula reads (:func:`naive_log_softmax`), which overflows.

    Shape: logits (N, K), labels (N,) integers in [0, K) -> a float (on a GPU
    backend a 0-d device array, see :func:`npconv.backend.scalar`).

    Cached by forward: the probabilities ``p`` (N, K) and the labels.
    """

    def __init__(self, reduction="mean", stable=True):
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
        self.reduction = reduction
        self.stable = stable

    def forward(self, logits, labels):
        xp = B.xp
        n, k = logits.shape
        labels = _check_labels(labels, n, k)
        log_probs = log_softmax(logits) if self.stable else naive_log_softmax(logits)
        self._save(xp.exp(log_probs), labels)
        picked = -log_probs[xp.arange(n), labels]
        return B.scalar(picked.sum() if self.reduction == "sum" else picked.mean())

    def backward(self, dy=1.0):
        """Return ``dL/dlogits`` (N, K), times ``dy`` (the upstream scalar, 1 by default)."""
        probs, labels = self._saved_tensors()
        n = probs.shape[0]
        grad = probs.copy()
        grad[B.xp.arange(n), labels] -= 1
        return grad * (dy if self.reduction == "sum" else dy / n)

    def extra_repr(self):
        return f"reduction={self.reduction!r}" + ("" if self.stable else ", stable=False")


class MSELoss(Module):
    """Mean squared error ("Euclidean loss"), averaged over every element.

    .. math::  L = \\frac{1}{M} \\sum_i (y_i - t_i)^2, \\qquad
               \\frac{\\partial L}{\\partial y} = \\frac{2}{M} (y - t)

    where ``M`` is the number of elements of ``y``: ``torch.nn.MSELoss()``
    with its default mean reduction. When ``target`` is a vector of integer
    class labels and ``y`` is (N, K), the target is their one-hot encoding, so
    the loss can train a classifier directly.

    Shape: output (N, ...) and target of the same shape (or (N,) labels) -> a float.

    Cached by forward: the difference ``y - t``.
    """

    def forward(self, output, target):
        xp = B.xp
        target = xp.asarray(target)
        if output.ndim == 2 and target.ndim == 1 and target.dtype.kind in "iu":
            labels = _check_labels(target, *output.shape)
            target = xp.zeros_like(output)
            target[xp.arange(output.shape[0]), labels] = 1
        if target.shape != output.shape:
            raise ValueError(f"target shape {target.shape} does not match output shape {output.shape}")
        diff = output - target.astype(output.dtype)
        self._save(diff)
        return B.scalar((diff * diff).mean())

    def backward(self, dy=1.0):
        """Return ``dL/doutput``, same shape as the output."""
        (diff,) = self._saved_tensors()
        return diff * (2 * dy / diff.size)
