"""Losses: softmax cross-entropy and mean squared error.

A loss is called as ``loss(output, target) -> float`` and keeps what its
gradient needs; ``loss.backward()`` then returns ``d(loss)/d(output)``, the
``dy`` that starts the network's backward pass.
"""

from .. import backend as B
from .module import Module


def _check_labels(labels, n, num_classes):
    xp = B.xp
    labels = xp.asarray(labels)
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be {n} integer class indices, got shape {labels.shape} dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
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


class SoftmaxCrossEntropyLoss(Module):
    """Softmax followed by cross-entropy, fused, averaged over the batch.

    For logits :math:`z` (N, K) and integer labels :math:`t` (N,):

    .. math::

        \\log p_{nk} = z_{nk} - \\log \\sum_j e^{z_{nj}}, \\qquad
        L = -\\frac{1}{N} \\sum_n \\log p_{n t_n}

    The log-sum-exp is computed after subtracting each row's maximum (see
    :func:`log_softmax`), so no ``exp`` overflows even for logits of ±1000.
    The gradient is

    .. math::  \\frac{\\partial L}{\\partial z} = (p - \\text{onehot}(t)) / N

    This is ``torch.nn.CrossEntropyLoss()`` with its default mean reduction.

    Shape: logits (N, K), labels (N,) integers in [0, K) -> a float.

    Cached by forward: the probabilities ``p`` (N, K) and the labels.
    """

    def forward(self, logits, labels):
        xp = B.xp
        n, k = logits.shape
        labels = _check_labels(labels, n, k)
        log_probs = log_softmax(logits)
        self._save(xp.exp(log_probs), labels)
        return float(-log_probs[xp.arange(n), labels].mean())

    def backward(self, dy=1.0):
        """Return ``dL/dlogits`` (N, K), times ``dy`` (the upstream scalar, 1 by default)."""
        probs, labels = self._saved_tensors()
        n = probs.shape[0]
        grad = probs.copy()
        grad[B.xp.arange(n), labels] -= 1
        return grad * (dy / n)


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
        return float((diff * diff).mean())

    def backward(self, dy=1.0):
        """Return ``dL/doutput``, same shape as the output."""
        (diff,) = self._saved_tensors()
        return diff * (2 * dy / diff.size)
