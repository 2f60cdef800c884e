"""The engine's Chain: ReLU after MaxPool2d, exactly; kernels keep the batch-last layout a convolution gives."""

import numpy as np
import pytest
from conftest import randomize_output_layer

from npconv import models, nn
from npconv.engine.chain import Chain, kernel_for
from npconv.engine.layout import is_batch_last

F32, F64 = np.float32, np.float64


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_sequential_pool_before_relu_is_exact(rng, dtype):
    """A Chain runs ReLU -> MaxPool2d as MaxPool2d -> ReLU; outputs and gradients are bit-identical
    to running the kernels one by one in the written order, ties and negative windows included."""
    model = randomize_output_layer(models.cnn(rng=rng, dtype=dtype), rng)
    chain = Chain(kernel_for(layer) for layer in model.layers)
    assert chain.order[:3] == [0, 2, 1], "conv, pool, relu"
    x = np.where(rng.random((4, 1, 28, 28)) < 0.7, 0.0, rng.standard_normal((4, 1, 28, 28))).astype(dtype)
    dy = rng.standard_normal((4, 10)).astype(dtype)

    model.zero_grad()
    y_seq = chain.forward(x)
    dx_seq = chain.backward(dy)
    grads_seq = {name: p.grad.copy() for name, p in model.named_parameters()}

    model.zero_grad()
    h = x
    for kernel in chain.kernels:  # the written order, by hand
        h = kernel.forward(h)
    d = dy
    for kernel in reversed(chain.kernels):
        d = kernel.backward(d)
    np.testing.assert_array_equal(y_seq, h, err_msg="output: Chain / written order")
    np.testing.assert_array_equal(dx_seq, d, err_msg="dx: Chain / written order")
    for name, p in model.named_parameters():
        np.testing.assert_array_equal(grads_seq[name], p.grad, err_msg=f"{name}: Chain / written order")




@pytest.mark.parametrize("layer", [nn.ReLU(), nn.MaxPool2d(2), nn.AvgPool2d(3, stride=2, padding=1), nn.Tanh()],
                         ids=lambda layer: type(layer).__name__)
def test_kernels_keep_the_batch_last_layout_of_a_convolution_both_ways(rng, layer):
    """A convolution kernel's output is batch-last; the kernels after it keep that layout (the batch axis the
    fastest-moving one), and give dx in it."""
    conv = kernel_for(nn.Conv2d(2, 3, 3, padding=1, rng=rng, dtype=F64))
    h = conv.forward(rng.standard_normal((4, 2, 8, 8)))
    assert is_batch_last(h)
    kernel = kernel_for(layer)
    y = kernel.forward(h)
    dy = np.moveaxis(np.ascontiguousarray(np.moveaxis(rng.standard_normal(y.shape), 0, -1)), -1, 0)  # batch-last
    dx = kernel.backward(dy)
    assert y.strides[0] == y.itemsize and dx.strides[0] == dx.itemsize, f"batch not fastest: {y.strides, dx.strides}"
    flat = kernel_for(nn.Flatten()).forward(h)
    assert is_batch_last(flat) and flat.shape == (4, 3 * 8 * 8), "Flatten keeps the layout without a copy"
