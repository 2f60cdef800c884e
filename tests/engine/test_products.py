"""The engine's blocked matrix products (npconv.engine.products) equal the plain ones up to rounding.

Blocks cut a long sum into partial sums (``matmul_t_by_blocks``) or a long
product into independent column blocks (``matmul_by_blocks``); both are tried
with blocking switched on and off, on shapes with and without a partial last
block, against NumPy's plain product in float64; and a convolution computed in
blocks of output rows against the same layer in one block.
"""

import numpy as np
import pytest

from npconv import nn
from npconv.engine import conv as conv_module
from npconv.engine import plan as plan_module
from npconv.engine import products as _utils
from npconv.engine.conv import Conv2dKernel


@pytest.fixture(params=[True, False], ids=["blocked", "plain"])
def blocking(request, monkeypatch):
    monkeypatch.setattr(_utils, "BLOCKED_PRODUCTS", request.param)
    monkeypatch.setattr(_utils, "BLOCK_MACS", 64)  # tiny blocks, so that small test shapes have many
    monkeypatch.setattr(_utils, "MIN_BLOCK_COLUMNS", 1)
    return request.param


def assert_close(actual, desired, what):
    scale = float(np.max(np.abs(desired)))
    np.testing.assert_allclose(actual, desired, rtol=0, atol=1e-13 * scale, err_msg=f"{what}: blocked / plain")


@pytest.mark.parametrize("m, k, length", [(3, 4, 40), (3, 4, 41), (2, 5, 3), (8, 10, 1000), (1, 1, 7)])
def test_matmul_by_blocks_equals_the_plain_product(rng, blocking, m, k, length):
    a, b = rng.standard_normal((m, k)), rng.standard_normal((k, length))
    out = _utils.matmul_by_blocks(a, b)
    assert out.shape == (m, length)
    assert_close(out, a @ b, "a @ b")


@pytest.mark.parametrize("m, r, length", [(3, 4, 40), (3, 4, 41), (2, 5, 3), (8, 10, 1000), (1, 1, 7)])
def test_matmul_t_by_blocks_equals_the_plain_product(rng, blocking, m, r, length):
    a, b = rng.standard_normal((m, length)), rng.standard_normal((r, length))
    out = _utils.matmul_t_by_blocks(a, b)
    assert out.shape == (m, r)
    assert_close(out, a @ b.T, "a @ b.T")


@pytest.mark.parametrize("m, r, length", [(3, 4, 40), (8, 10, 1000)])
def test_too_short_blocks_give_one_swapped_product(rng, monkeypatch, m, r, length):
    """Blocks shorter than MIN_BLOCK_COLUMNS: one product instead, the same sums up to float32 rounding."""
    monkeypatch.setattr(_utils, "BLOCKED_PRODUCTS", True)
    monkeypatch.setattr(_utils, "BLOCK_MACS", 64)
    a = rng.standard_normal((m, length)).astype(np.float32)
    b = rng.standard_normal((r, length)).astype(np.float32)
    out = _utils.matmul_t_by_blocks(a, b)
    assert out.shape == (m, r)
    exact = a.astype(np.float64) @ b.astype(np.float64).T
    np.testing.assert_allclose(out, exact, rtol=0, atol=1e-5 * float(np.max(np.abs(exact))))


def test_blocked_sums_are_repeatable_and_really_blocked(rng, blocking):
    """Same inputs, same bits; and with blocks on, the long sum is really added in another order."""
    a = rng.standard_normal((4, 5000)).astype(np.float32)
    b = rng.standard_normal((6, 5000)).astype(np.float32)
    first, second = _utils.matmul_t_by_blocks(a, b), _utils.matmul_t_by_blocks(a, b)
    np.testing.assert_array_equal(first, second)
    if blocking:
        assert not np.array_equal(first, a @ b.T), "float32 partial sums should differ from one long sum somewhere"


def test_strided_operands(rng, blocking):
    """Views (a transposed weight, a slice of a larger buffer) give the same products as copies."""
    big = rng.standard_normal((7, 90))
    a, b = big[:3, :5].T, big[:3, 10:80]  # a (5, 3) transposed view, b (3, 70) with a row stride of 90
    assert_close(_utils.matmul_by_blocks(a, b), np.ascontiguousarray(a) @ np.ascontiguousarray(b), "views")
    assert_close(_utils.matmul_t_by_blocks(b, b), b @ b.T, "views, a @ a.T")


def test_openblas_told_to_use_avx2_kernels_gets_plain_products(monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    assert plan_module.blas_has_small_matrix_kernels() is False


def one_row_per_block(monkeypatch):
    """Every convolution, however small, computed in blocks of one output row."""
    monkeypatch.setattr(conv_module, "WHOLE_BYTES", 0)
    monkeypatch.setattr(conv_module, "BLOCK_BYTES", 1)
    monkeypatch.setattr(conv_module, "MIN_COPY_BYTES", 0)


@pytest.mark.parametrize("stride, padding, size", [(1, 1, 9), (2, 0, 11), (1, 2, 7)])
def test_a_convolution_in_blocks_of_output_rows_equals_the_whole_one(rng, monkeypatch, stride, padding, size):
    """A training step of a large convolution runs in blocks of output rows (cols built again in backward):
    the same outputs, input gradient and parameter gradients, up to rounding, as one product."""
    layer = nn.Conv2d(3, 4, 3, stride=stride, padding=padding, rng=rng, dtype=np.float64)
    kernel = Conv2dKernel(layer)
    x = rng.standard_normal((5, 3, size, size))

    def step():
        layer.zero_grad()
        y = kernel.forward(x)
        dy = np.cos(np.arange(y.size)).reshape(y.shape)
        return y, kernel.backward(dy), layer.weight.grad.copy(), layer.bias.grad.copy()

    whole = step()
    one_row_per_block(monkeypatch)
    n, oh, ow = layer._output_shape(x.shape)
    assert len(kernel._blocks(3, oh, ow, n)) == oh > 1
    blocked = step()
    for name, a, b in zip(("y", "dx", "dW", "db"), blocked, whole):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-13 * float(np.max(np.abs(b))), err_msg=name)
    layer.zero_grad()
    kernel.forward(x)
    assert kernel.backward(np.ones_like(whole[0]), input_grad=False) is None
    np.testing.assert_allclose(layer.bias.grad, np.full(4, whole[0][:, 0].size), rtol=1e-13)


def test_inference_computes_the_blocks_of_a_training_forward_and_keeps_nothing(rng, monkeypatch):
    """Under no_grad a convolution in blocks gives a training forward's numbers, bit for bit (the same blocks,
    the same products), and keeps nothing for backward."""
    one_row_per_block(monkeypatch)
    kernel = Conv2dKernel(nn.Conv2d(3, 4, 3, padding=1, rng=rng))
    x = rng.standard_normal((6, 3, 8, 8)).astype(np.float32)
    trained = kernel.forward(x)
    with nn.no_grad():
        inferred = kernel.forward(x)
    np.testing.assert_array_equal(inferred, trained)
    with pytest.raises(RuntimeError, match="no_grad"):
        kernel.backward(np.ones_like(trained))


def test_blocks_of_small_copies_are_not_worth_it(rng, monkeypatch):
    """A large cols is cut into blocks only where each kernel offset's copy into a block moves
    MIN_COPY_BYTES or more: lenet5's first convolution on 100 images stays one block, the study's
    cnn's second does not (docs/performance.md)."""
    lenet_c1 = Conv2dKernel(nn.Conv2d(1, 6, 5, padding=2, rng=rng))  # cols: 26 rows x 28*28*100 columns, 8.2 MB
    cnn_c2 = Conv2dKernel(nn.Conv2d(8, 16, 3, padding=1, rng=rng))   # 73 rows x 14*14*100 columns, 5.7 MB
    assert lenet_c1._blocks(1, 28, 28, 100) == [(0, 28)]
    blocks = cnn_c2._blocks(8, 14, 14, 100)
    assert len(blocks) > 1 and blocks[0][0] == 0 and blocks[-1][1] == 14
    monkeypatch.setattr(conv_module, "MIN_COPY_BYTES", 0)
    assert len(lenet_c1._blocks(1, 28, 28, 100)) > 1
