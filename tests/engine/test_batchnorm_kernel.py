"""The batch-norm kernel's steps on parts of a batch give the textbook layer's numbers on the whole batch."""

import numpy as np
import pytest

from npconv import nn
from npconv.engine.batchnorm import BatchNormKernel, pooled


def test_the_training_steps_on_parts_of_a_batch_give_the_whole_batch_normalization(rng):
    """The kernel's steps -- moments of each part, pooled, normalize: the textbook layer's forward on the whole
    batch, up to rounding;
    gradient_sums added up, input_gradient: its backward. normalize before moments is a clear error."""
    x = rng.standard_normal((12, 3, 4, 4)) * 3 + 1
    dy = rng.standard_normal(x.shape)
    whole = nn.BatchNorm2d(3, dtype=np.float64)
    parts = [BatchNormKernel(nn.BatchNorm2d(3, dtype=np.float64)) for _ in range(3)]
    y = whole(x)
    dx = whole.backward(dy)
    pieces = np.split(x, [2, 7])  # parts of different sizes
    moments = [layer.moments(p) for layer, p in zip(parts, pieces)]
    mean, var = pooled(moments)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)), rtol=1e-13)
    np.testing.assert_allclose(var, x.var(axis=(0, 2, 3)), rtol=1e-13)
    ys = [layer.normalize(mean, var) for layer in parts]
    np.testing.assert_allclose(np.concatenate(ys), y, rtol=0, atol=1e-13)
    dys = np.split(dy, [2, 7])
    sums = [layer.gradient_sums(d) for layer, d in zip(parts, dys)]
    total = tuple(sum(s) for s in zip(*sums))
    dxs = [layer.input_gradient(d, total, count=x.size // 3) for layer, d in zip(parts, dys)]
    np.testing.assert_allclose(np.concatenate(dxs), dx, rtol=0, atol=1e-13 * np.max(np.abs(dx)))
    np.testing.assert_allclose(sum(kernel.weight.grad for kernel in parts), whole.weight.grad, rtol=1e-13)
    with pytest.raises(RuntimeError, match="before moments"):
        parts[0].normalize(mean, var)
