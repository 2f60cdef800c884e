"""Naive, loop-based reference implementations of convolution, pooling and batch normalization.

The formulas of :mod:`npconv.nn.conv`, :mod:`npconv.nn.pool`, :mod:`npconv.nn.avgpool`
and :mod:`npconv.nn.batchnorm` written the most direct way: plain loops over output
pixels, float64 throughout, no strided slices, no im2col. Read a layer beside its
loop version; they are slow and only meant for small shapes, and the layers (and
the engine's kernels) are tested against them.

Conventions (the same as npconv and PyTorch):

* images are NCHW: ``x`` has shape ``(N, C, H, W)``;
* a convolution weight is ``(K, C, KH, KW)`` and its bias ``(K,)``;
* ``stride`` and ``padding`` are an int or a pair ``(along H, along W)``;
* output size, for each spatial axis::

      OH = (H + 2*padding - KH) // stride + 1
      OW = (W + 2*padding - KW) // stride + 1

  (max pooling has no padding: ``OH = (H - KH) // stride + 1``).
"""

import math

import numpy as np


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def _pad(x, ph, pw):
    """Zero-pad the two spatial axes of an (N, C, H, W) array by ph / pw on each side."""
    n, c, h, w = x.shape
    padded = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=np.float64)
    padded[:, :, ph : ph + h, pw : pw + w] = x
    return padded


def conv2d_output_size(h, w, kernel, stride, padding):
    """``(OH, OW)`` of a convolution (or, with padding 0, of a pooling)."""
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel), _pair(stride), _pair(padding)
    return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


def conv2d_forward(x, w, b, stride=1, padding=0):
    """Cross-correlation, as every deep-learning library calls "convolution".

    With ``x_p`` the input zero-padded by ``padding`` and ``s`` the stride::

        y[n, k, i, j] = b[k] + sum_{c, u, v} w[k, c, u, v] * x_p[n, c, i*s_h + u, j*s_w + v]

    Parameters
    ----------
    x : (N, C, H, W)
    w : (K, C, KH, KW)
    b : (K,)
    stride, padding : int or (int, int)

    Returns
    -------
    y : (N, K, OH, OW), float64
    """
    x, w, b = (np.asarray(a, dtype=np.float64) for a in (x, w, b))
    n, c, h, width = x.shape
    k, c_w, kh, kw = w.shape
    assert c == c_w, f"input has {c} channels, weight expects {c_w}"
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    oh, ow = conv2d_output_size(h, width, (kh, kw), (sh, sw), (ph, pw))
    xp = _pad(x, ph, pw)

    y = np.zeros((n, k, oh, ow), dtype=np.float64)
    for ni in range(n):
        for ki in range(k):
            for i in range(oh):
                for j in range(ow):
                    window = xp[ni, :, i * sh : i * sh + kh, j * sw : j * sw + kw]  # (C, KH, KW)
                    y[ni, ki, i, j] = np.sum(window * w[ki]) + b[ki]
    return y


def conv2d_backward(dy, x, w, stride=1, padding=0):
    """Gradients of a convolution, given ``dy = dL/dy`` of shape (N, K, OH, OW).

    Each output pixel ``y[n, k, i, j]`` depends on one window of the padded input
    and on the whole filter ``w[k]``, so, summing over every output pixel::

        dx_p[n, :, i*s_h : i*s_h+KH, j*s_w : j*s_w+KW] += dy[n, k, i, j] * w[k]
        dw[k]                                         += dy[n, k, i, j] * window
        db[k]                                         += dy[n, k, i, j]

    and ``dx`` is ``dx_p`` with the padding cut off (padding is a constant, so
    the gradient that lands on it is simply dropped).

    Returns
    -------
    dx : (N, C, H, W), dw : (K, C, KH, KW), db : (K,), all float64
    """
    dy, x, w = (np.asarray(a, dtype=np.float64) for a in (dy, x, w))
    n, c, h, width = x.shape
    k, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    oh, ow = conv2d_output_size(h, width, (kh, kw), (sh, sw), (ph, pw))
    assert dy.shape == (n, k, oh, ow), f"dy has shape {dy.shape}, expected {(n, k, oh, ow)}"
    xp = _pad(x, ph, pw)

    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    db = np.zeros(k, dtype=np.float64)
    for ni in range(n):
        for ki in range(k):
            for i in range(oh):
                for j in range(ow):
                    rows = slice(i * sh, i * sh + kh)
                    cols = slice(j * sw, j * sw + kw)
                    g = dy[ni, ki, i, j]
                    dxp[ni, :, rows, cols] += g * w[ki]
                    dw[ki] += g * xp[ni, :, rows, cols]
                    db[ki] += g
    dx = dxp[:, :, ph : ph + h, pw : pw + width]
    return dx, dw, db


def maxpool_forward(x, kernel_size, stride=None):
    """Max pooling without padding; ``stride`` defaults to ``kernel_size``.

    ::

        y[n, c, i, j] = max_{u < KH, v < KW} x[n, c, i*s_h + u, j*s_w + v]

    The window is scanned in row-major order (u, then v) and only a *strictly*
    larger value replaces the current best, so on ties the **first** maximum wins,
    as in PyTorch.

    Returns
    -------
    y : (N, C, OH, OW), float64
    argmax : (N, C, OH, OW, 2) int
        ``argmax[n, c, i, j] = (row, col)``: the input coordinates of the first
        maximum of that window, which is where its gradient goes.
    """
    x = np.asarray(x, dtype=np.float64)
    n, c, h, w = x.shape
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(kernel_size if stride is None else stride)
    oh, ow = conv2d_output_size(h, w, (kh, kw), (sh, sw), 0)

    y = np.zeros((n, c, oh, ow), dtype=np.float64)
    argmax = np.zeros((n, c, oh, ow, 2), dtype=np.int64)
    for ni in range(n):
        for ci in range(c):
            for i in range(oh):
                for j in range(ow):
                    best, best_at = -np.inf, None
                    for u in range(kh):
                        for v in range(kw):
                            row, col = i * sh + u, j * sw + v
                            value = x[ni, ci, row, col]
                            if best_at is None or value > best:
                                best, best_at = value, (row, col)
                    y[ni, ci, i, j] = best
                    argmax[ni, ci, i, j] = best_at
    return y, argmax


def maxpool_backward(dy, argmax, x_shape):
    """Route each window's gradient to its first maximum (PyTorch's rule).

    ::

        dx[n, c, argmax[n, c, i, j]] += dy[n, c, i, j]

    Exactly one input element per window receives that window's gradient, so
    ``dx.sum() == dy.sum()``. "+=" because overlapping windows (stride < kernel)
    may pick the same element.

    Returns
    -------
    dx : x_shape, float64
    """
    dy = np.asarray(dy, dtype=np.float64)
    n, c, oh, ow = dy.shape
    dx = np.zeros(x_shape, dtype=np.float64)
    for ni in range(n):
        for ci in range(c):
            for i in range(oh):
                for j in range(ow):
                    row, col = argmax[ni, ci, i, j]
                    dx[ni, ci, row, col] += dy[ni, ci, i, j]
    return dx


def avgpool_forward(x, kernel_size, stride=None, padding=0):
    """Average pooling; zero padding counts in the average (PyTorch's ``count_include_pad=True``).

    ::

        y[n, c, i, j] = (1 / (KH*KW)) * sum_{u < KH, v < KW} x_p[n, c, i*s_h + u, j*s_w + v]

    Returns
    -------
    y : (N, C, OH, OW), float64
    """
    x = np.asarray(x, dtype=np.float64)
    n, c, h, w = x.shape
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(kernel_size if stride is None else stride)
    ph, pw = _pair(padding)
    oh, ow = conv2d_output_size(h, w, (kh, kw), (sh, sw), (ph, pw))
    xp = _pad(x, ph, pw)
    y = np.zeros((n, c, oh, ow), dtype=np.float64)
    for ni in range(n):
        for ci in range(c):
            for i in range(oh):
                for j in range(ow):
                    total = 0.0
                    for u in range(kh):
                        for v in range(kw):
                            total += xp[ni, ci, i * sh + u, j * sw + v]
                    y[ni, ci, i, j] = total / (kh * kw)
    return y


def avgpool_backward(dy, x_shape, kernel_size, stride=None, padding=0):
    """Every entry of a window receives an equal share of the window's gradient::

        dx_p[n, c, i*s_h + u, j*s_w + v] += dy[n, c, i, j] / (KH*KW)     for every u < KH, v < KW

    and ``dx`` is ``dx_p`` without the padding.

    Returns
    -------
    dx : x_shape, float64
    """
    dy = np.asarray(dy, dtype=np.float64)
    n, c, h, w = x_shape
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(kernel_size if stride is None else stride)
    ph, pw = _pair(padding)
    _, _, oh, ow = dy.shape
    dxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=np.float64)
    for ni in range(n):
        for ci in range(c):
            for i in range(oh):
                for j in range(ow):
                    for u in range(kh):
                        for v in range(kw):
                            dxp[ni, ci, i * sh + u, j * sw + v] += dy[ni, ci, i, j] / (kh * kw)
    return dxp[:, :, ph : ph + h, pw : pw + w]


def _channel_indices(shape):
    """For (N, C) or (N, C, H, W) arrays: per channel, the index of every value that belongs to it."""
    per_channel = [[] for _ in range(shape[1])]
    for index in np.ndindex(*shape):
        per_channel[index[1]].append(index)
    return per_channel


def batchnorm_forward(x, gamma, beta, eps=1e-5):
    """Batch normalization in training mode, one channel at a time, with plain loops.

    For each channel, over its M values (all of the batch's, and every pixel's for images)::

        mean = sum(x) / M
        var  = sum((x - mean)^2) / M          (biased)
        y    = gamma * (x - mean) / sqrt(var + eps) + beta

    Returns
    -------
    y : x's shape, float64
    mean, var : (C,) float64 -- the batch statistics (``var`` biased)
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.zeros_like(x)
    channels = _channel_indices(x.shape)
    mean, var = np.zeros(len(channels)), np.zeros(len(channels))
    for c, indices in enumerate(channels):
        m = len(indices)
        mean[c] = sum(x[i] for i in indices) / m
        var[c] = sum((x[i] - mean[c]) ** 2 for i in indices) / m
        for i in indices:
            y[i] = gamma[c] * (x[i] - mean[c]) / math.sqrt(var[c] + eps) + beta[c]
    return y, mean, var


def batchnorm_backward(dy, x, gamma, eps=1e-5):
    """Gradients of training-mode batch normalization, by the chain rule one stage at a time.

    Not the compact formula npconv uses: this walks back through the forward's
    stages (xhat, then var, then mean), as a computational graph does::

        dxhat_i = dy_i * gamma
        dvar    = sum_i dxhat_i * (x_i - mean) * (-1/2) * (var + eps)^(-3/2)
        dmean   = sum_i dxhat_i * (-1 / sqrt(var + eps))  +  dvar * sum_i (-2 (x_i - mean)) / M
        dx_i    = dxhat_i / sqrt(var + eps) + dvar * 2 (x_i - mean) / M + dmean / M
        dgamma  = sum_i dy_i * xhat_i,    dbeta = sum_i dy_i

    Returns
    -------
    dx : x's shape, dgamma : (C,), dbeta : (C,), all float64
    """
    dy, x = np.asarray(dy, dtype=np.float64), np.asarray(x, dtype=np.float64)
    dx = np.zeros_like(x)
    channels = _channel_indices(x.shape)
    dgamma, dbeta = np.zeros(len(channels)), np.zeros(len(channels))
    for c, indices in enumerate(channels):
        m = len(indices)
        mean = sum(x[i] for i in indices) / m
        var = sum((x[i] - mean) ** 2 for i in indices) / m
        std = math.sqrt(var + eps)
        dxhat = {i: dy[i] * gamma[c] for i in indices}
        dvar = sum(dxhat[i] * (x[i] - mean) for i in indices) * -0.5 * (var + eps) ** -1.5
        dmean = sum(-dxhat[i] / std for i in indices) + dvar * sum(-2 * (x[i] - mean) for i in indices) / m
        for i in indices:
            dx[i] = dxhat[i] / std + dvar * 2 * (x[i] - mean) / m + dmean / m
            dgamma[c] += dy[i] * (x[i] - mean) / std
            dbeta[c] += dy[i]
    return dx, dgamma, dbeta
