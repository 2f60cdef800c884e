"""Layer behaviour: the textbook conv/pool against the naive loop reference, ties, dtypes,
errors, Dropout, parameter names, modes and numerical safety.

The loop-based reference is ``npconv/nn/reference.py``.
"""

import math

import numpy as np
import pytest

from conftest import LAYOUTS, in_layout, randomize_output_layer
from hypothesis import given, settings
from hypothesis import strategies as st

from npconv import models, nn
from npconv.nn import reference

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)

# Deterministic hypothesis runs: no example database, same examples every time.
DETERMINISTIC = settings(max_examples=40, deadline=None, derandomize=True, database=None)


def assert_close(mine, ref, what, rtol=1e-12, atol=1e-12):
    np.testing.assert_allclose(mine, ref, rtol=rtol, atol=atol, err_msg=f"{what}: npconv / reference")


# --- Conv2d against the reference ----------------------------------------------------

def check_conv_against_reference(rng, n, c, k, hw, kernel_size, stride, padding, layout="nchw"):
    """Forward and backward against the loop reference; ``x`` and ``dy`` arrive stored as ``layout`` says."""
    conv = nn.Conv2d(c, k, kernel_size, stride=stride, padding=padding, rng=rng, dtype=F64)
    conv.bias.data[...] = rng.standard_normal(k)
    x = rng.standard_normal((n, c, *hw))

    y = conv(in_layout(x, layout))
    y_ref = reference.conv2d_forward(x, conv.weight.data, conv.bias.data, stride, padding)
    assert y.shape == y_ref.shape, f"output shape: npconv {y.shape} / reference {y_ref.shape}"
    assert_close(y, y_ref, "Conv2d forward")

    dy = rng.standard_normal(y.shape)
    dx = conv.backward(in_layout(dy, layout))
    dx_ref, dw_ref, db_ref = reference.conv2d_backward(dy, x, conv.weight.data, stride, padding)
    assert dx.shape == x.shape, f"dx shape {dx.shape} != x shape {x.shape}"
    assert_close(dx, dx_ref, "Conv2d dx")
    assert_close(conv.weight.grad, dw_ref, "Conv2d dw")
    assert_close(conv.bias.grad, db_ref, "Conv2d db")


@pytest.mark.parametrize("kernel_size", [1, 3, (2, 3), (4, 1)], ids=str)
@pytest.mark.parametrize("stride", [1, 2, 3, (2, 1)], ids=lambda s: f"s{s}")
@pytest.mark.parametrize("padding", [0, 1, 2, (0, 1)], ids=lambda p: f"p{p}")
def test_conv2d_matches_reference_grid(rng, kernel_size, stride, padding):
    check_conv_against_reference(rng, 2, 3, 4, (7, 6), kernel_size, stride, padding)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("stride, padding", [(1, 1), (2, 0), ((1, 2), (2, 1))], ids=str)
def test_conv2d_results_do_not_depend_on_the_memory_layout_of_x_and_dy(rng, layout, stride, padding):
    """Conv2d stores images batch-last inside; any layout of its input and of dy gives the same numbers."""
    check_conv_against_reference(rng, 3, 2, 4, (6, 7), 3, stride, padding, layout=layout)


@st.composite
def conv_configs(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    # The padded image must hold at least one window.
    h = draw(st.integers(max(1, kh - 2 * ph), 9))
    w = draw(st.integers(max(1, kw - 2 * pw), 9))
    return dict(
        n=draw(st.integers(1, 3)), c=draw(st.integers(1, 3)), k=draw(st.integers(1, 4)),
        hw=(h, w), kernel_size=(kh, kw), stride=(sh, sw), padding=(ph, pw),
    )


@DETERMINISTIC
@given(config=conv_configs(), seed=st.integers(0, 2**32 - 1))
def test_conv2d_matches_reference_random_shapes(config, seed):
    check_conv_against_reference(np.random.default_rng(seed), **config)


def test_conv2d_output_size_formula(rng):
    # OH = (H + 2*padding - KH) // stride + 1: (9 + 2 - 3) // 2 + 1 = 5, (8 + 0 - 2) // 3 + 1 = 3
    conv = nn.Conv2d(1, 2, (3, 2), stride=(2, 3), padding=(1, 0), rng=rng)
    y = conv(rng.standard_normal((1, 1, 9, 8)))
    assert y.shape == (1, 2, 5, 3), f"output shape {y.shape}, expected (1, 2, 5, 3)"


def test_conv2d_gradients_accumulate(rng):
    """Two backward passes without zero_grad add up, as in PyTorch."""
    conv = nn.Conv2d(2, 3, 3, padding=1, rng=rng, dtype=F64)
    x = rng.standard_normal((2, 2, 5, 5))
    dy = rng.standard_normal(conv(x).shape)
    conv.backward(dy)
    once = conv.weight.grad.copy()
    conv.backward(dy)
    assert_close(conv.weight.grad, 2 * once, "weight grad after two backward passes / twice one pass")


def test_conv2d_rejects_bad_shapes(rng):
    conv = nn.Conv2d(3, 2, 5, rng=rng)
    with pytest.raises(ValueError, match="channels"):
        conv(np.zeros((1, 2, 8, 8)))
    with pytest.raises(ValueError, match="kernel"):
        conv(np.zeros((1, 3, 4, 8)))  # 4 < 5: no window fits


# --- MaxPool2d against the reference --------------------------------------------------

def check_pool_against_reference(rng, x, kernel_size, stride, layout="nchw", dy_layout="nchw"):
    pool = nn.MaxPool2d(kernel_size, stride=stride)
    y = pool(in_layout(x, layout))
    y_ref, argmax = reference.maxpool_forward(x, kernel_size, stride)
    assert y.shape == y_ref.shape, f"output shape: npconv {y.shape} / reference {y_ref.shape}"
    assert_close(y, y_ref, "MaxPool2d forward", rtol=0, atol=0)

    dy = rng.standard_normal(y.shape)
    dx = pool.backward(in_layout(dy, dy_layout))
    dx_ref = reference.maxpool_backward(dy, argmax, x.shape)
    # Overlapping windows add several dy into one element, in another order than the reference.
    assert_close(dx, dx_ref, "MaxPool2d dx", rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(dx.sum(), dy.sum(), rtol=1e-12, err_msg="total gradient mass: sum(dx) / sum(dy)")


POOL_CONFIGS = [(2, None), (2, 1), (3, None), (3, 1), (3, 2), (2, 3), ((2, 3), None), ((3, 2), (1, 2))]


@pytest.mark.parametrize("kernel_size, stride", POOL_CONFIGS, ids=str)
@pytest.mark.parametrize("hw", [(7, 5), (6, 6), (28, 28)], ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_maxpool2d_matches_reference_distinct_values(rng, kernel_size, stride, hw):
    check_pool_against_reference(rng, rng.standard_normal((2, 2, *hw)), kernel_size, stride)


@pytest.mark.parametrize("kernel_size, stride", POOL_CONFIGS, ids=str)
@pytest.mark.parametrize("levels", [2, 3])
def test_maxpool2d_matches_reference_with_ties(rng, kernel_size, stride, levels):
    # A few repeated integer values: most windows hold several equal maxima.
    x = rng.integers(0, levels, size=(2, 3, 7, 5)).astype(F64)
    check_pool_against_reference(rng, x, kernel_size, stride)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dy_layout", LAYOUTS)
@pytest.mark.parametrize("kernel_size, stride", [(2, None), (3, 2)], ids=str)
def test_maxpool2d_results_do_not_depend_on_the_memory_layout_of_x_and_dy(rng, layout, dy_layout, kernel_size, stride):
    x = rng.integers(0, 3, size=(3, 2, 7, 6)).astype(F64)  # with ties
    check_pool_against_reference(rng, x, kernel_size, stride, layout, dy_layout)


@pytest.mark.parametrize("kernel_size, stride", POOL_CONFIGS, ids=str)
def test_maxpool2d_each_window_sends_its_gradient_to_its_first_maximum(rng, kernel_size, stride):
    """One window at a time: dy = 1 there, 0 elsewhere -> exactly one input element gets 1.

    The element must be a maximum of that window, and the first one in row-major order.
    """
    x = rng.integers(0, 2, size=(1, 1, 7, 6)).astype(F64)
    pool = nn.MaxPool2d(kernel_size, stride=stride)
    y = pool(x)
    (kh, kw), (sh, sw) = pool.kernel_size, pool.stride
    for i in range(y.shape[2]):
        for j in range(y.shape[3]):
            dy = np.zeros_like(y)
            dy[0, 0, i, j] = 1.0
            dx = pool.backward(dy)
            hit = np.argwhere(dx != 0)
            assert len(hit) == 1, f"window ({i}, {j}) sent gradient to {len(hit)} elements: {hit.tolist()}"
            row, col = hit[0, 2:]
            assert dx[0, 0, row, col] == 1.0, f"window ({i}, {j}): gradient {dx[0, 0, row, col]}, expected 1"
            window = x[0, 0, i * sh : i * sh + kh, j * sw : j * sw + kw]
            u, v = row - i * sh, col - j * sw
            assert 0 <= u < kh and 0 <= v < kw, f"window ({i}, {j}): gradient went outside it, to ({row}, {col})"
            first_max = np.unravel_index(np.argmax(window), window.shape)
            assert (u, v) == first_max, (
                f"window ({i}, {j}) = {window.tolist()}: gradient at {(u, v)}, first max at {first_max}"
            )


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_maxpool2d_all_equal_input_like_mnist_background(dtype):
    """A blank image: every window is a tie; each window's gradient goes to its top-left element only."""
    value = -0.4242  # MNIST background after normalization: (0 - 0.1307) / 0.3081
    x = np.full((2, 3, 8, 6), value, dtype=dtype)
    pool = nn.MaxPool2d(2)
    y = pool(x)
    assert np.all(y == dtype.type(value)), "max of equal values must be that value"
    dy = np.arange(1, y.size + 1, dtype=dtype).reshape(y.shape)
    dx = pool.backward(dy)
    expected = np.zeros_like(x)
    expected[:, :, ::2, ::2] = dy
    np.testing.assert_array_equal(dx, expected, err_msg="npconv / expected (top-left of each window)")
    assert dx.sum() == dy.sum(), f"gradient mass: sum(dx) {dx.sum()} / sum(dy) {dy.sum()}"


def test_maxpool2d_overlapping_windows_on_equal_input_accumulate(rng):
    """Stride 1 over a constant image: windows share their first maximum, so it receives several dy."""
    x = np.zeros((1, 1, 4, 4))
    pool = nn.MaxPool2d(2, stride=1)
    dy = np.ones_like(pool(x))
    dx = pool.backward(dy)
    dx_ref = reference.maxpool_backward(dy, reference.maxpool_forward(x, 2, 1)[1], x.shape)
    assert_close(dx, dx_ref, "MaxPool2d dx on a constant image, stride 1", rtol=0, atol=0)
    assert dx.sum() == dy.sum() == 9, f"sum(dx) {dx.sum()} / sum(dy) {dy.sum()}"


def test_maxpool2d_output_size_drops_partial_windows(rng):
    # OH = (7 - 2) // 2 + 1 = 3, OW = (5 - 2) // 2 + 1 = 2: the last row and column are dropped.
    y = nn.MaxPool2d(2)(rng.standard_normal((1, 1, 7, 5)))
    assert y.shape == (1, 1, 3, 2), f"output shape {y.shape}, expected (1, 1, 3, 2)"


# --- AvgPool2d against the reference -------------------------------------------------------

AVGPOOL_CONFIGS = [(2, None, 0), (2, 1, 0), (3, None, 1), (3, 2, 1), (2, 3, 0), ((2, 3), (1, 2), (1, 0))]


@pytest.mark.parametrize("kernel_size, stride, padding", AVGPOOL_CONFIGS, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_avgpool2d_matches_reference(rng, kernel_size, stride, padding, layout):
    x = rng.standard_normal((2, 3, 7, 6))
    pool = nn.AvgPool2d(kernel_size, stride=stride, padding=padding)
    y = pool(in_layout(x, layout))
    assert_close(y, reference.avgpool_forward(x, kernel_size, stride, padding), "AvgPool2d forward")
    dy = rng.standard_normal(y.shape)
    dx = pool.backward(in_layout(dy, layout))
    assert dx.shape == x.shape, f"dx shape {dx.shape} != x shape {x.shape}"
    assert_close(dx, reference.avgpool_backward(dy, x.shape, kernel_size, stride, padding), "AvgPool2d dx")


@pytest.mark.parametrize("kwargs, match", [({"kernel_size": 2, "padding": 2}, "padding"),
                                           ({"kernel_size": 2, "stride": 0}, "stride"),
                                           ({"kernel_size": 9}, "smaller than the kernel size")], ids=str)
def test_avgpool2d_rejects_bad_options(rng, kwargs, match):
    with pytest.raises(ValueError, match=match):
        nn.AvgPool2d(**kwargs)(rng.standard_normal((1, 1, 6, 6)))


# --- backward before forward ------------------------------------------------------------

LAYER_FACTORIES = {
    "Linear": lambda: nn.Linear(3, 2, rng=np.random.default_rng(0)),
    "Conv2d": lambda: nn.Conv2d(1, 2, 3, rng=np.random.default_rng(0)),
    "MaxPool2d": lambda: nn.MaxPool2d(2),
    "AvgPool2d": lambda: nn.AvgPool2d(2),
    "BatchNorm1d": lambda: nn.BatchNorm1d(2),
    "BatchNorm2d": lambda: nn.BatchNorm2d(2),
    "ReLU": nn.ReLU,
    "Sigmoid": nn.Sigmoid,
    "Tanh": nn.Tanh,
    "Flatten": nn.Flatten,
    "Dropout": lambda: nn.Dropout(0.5, rng=np.random.default_rng(0)),
    "Sequential": lambda: models.mlp(rng=np.random.default_rng(0)),
}


@pytest.mark.parametrize("name", sorted(LAYER_FACTORIES))
def test_backward_before_forward_is_a_clear_error(name):
    layer = LAYER_FACTORIES[name]()
    with pytest.raises(RuntimeError, match=r"backward\(\) called before forward\(\)"):
        layer.backward(np.ones((2, 2), dtype=F32))


@pytest.mark.parametrize("loss_class", [nn.SoftmaxCrossEntropyLoss, nn.MSELoss], ids=lambda c: c.__name__)
def test_loss_backward_before_forward_is_a_clear_error(loss_class):
    with pytest.raises(RuntimeError, match=rf"{loss_class.__name__}\.backward\(\) called before forward\(\)"):
        loss_class().backward()


def test_error_message_names_the_layer():
    with pytest.raises(RuntimeError, match=r"^Conv2d\.backward\(\) called before forward\(\)$"):
        nn.Conv2d(1, 1, 1, rng=np.random.default_rng(0)).backward(np.ones((1, 1, 1, 1)))


# --- dtypes ---------------------------------------------------------------------------

def forward_backward_dtypes(model, x, labels):
    """Run forward and backward layer by layer; return the dtype seen at every step."""
    seen = []
    for i, layer in enumerate(model):
        x = layer(x)
        seen.append((f"forward {i} {type(layer).__name__}", x.dtype))
    loss_fn = nn.SoftmaxCrossEntropyLoss()
    loss = loss_fn(x, labels)
    assert math.isfinite(loss), f"loss {loss}"
    dy = loss_fn.backward()
    seen.append(("loss gradient", dy.dtype))
    for i, layer in reversed(list(enumerate(model))):
        dy = layer.backward(dy)
        seen.append((f"backward {i} {type(layer).__name__}", dy.dtype))
    for name, p in model.named_parameters():
        seen.append((f"{name}.data", p.data.dtype))
        seen.append((f"{name}.grad", p.grad.dtype))
    return seen


DROPOUT_CASES = [
    (models.cnn, None), (models.cnn, "before-conv"), (models.cnn, "before-pool"), (models.cnn, "before-fc"),
    (models.mlp, None), (models.mlp, "before-fc"),
]


@pytest.mark.parametrize("builder, dropout_at", DROPOUT_CASES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_float32_default_never_upcasts(rng, builder, dropout_at):
    """float32 is the default: every activation, every gradient and every parameter stays float32."""
    kwargs = {} if dropout_at is None else dict(dropout=0.3, dropout_at=dropout_at)
    model = builder(rng=rng, **kwargs)
    randomize_output_layer(model, rng)
    x = rng.standard_normal((3, 1, 28, 28)).astype(F32)
    seen = forward_backward_dtypes(model, x, rng.integers(0, 10, size=3))
    wrong = [(step, str(dt)) for step, dt in seen if dt != F32]
    assert not wrong, f"expected float32 everywhere, got: {wrong}"


@pytest.mark.parametrize("builder, dropout_at", DROPOUT_CASES, ids=lambda v: getattr(v, "__name__", str(v)))
@pytest.mark.parametrize("input_dtype", [F64, np.dtype(np.uint8)], ids=str)
def test_float32_model_casts_other_inputs_at_its_first_weight_layer(rng, builder, dropout_at, input_dtype):
    """float64 or uint8 images into a float32 model: the first Linear/Conv2d casts them, so from
    there on every activation, the loss gradient, every backward step down to that layer and
    every parameter gradient is float32. (Layers before it -- Flatten, an input Dropout -- own no
    parameters and follow their input: a float64 image stays float64 there, both ways, as in
    PyTorch; a Dropout on integer pixels works in float32.)"""
    kwargs = {} if dropout_at is None else dict(dropout=0.3, dropout_at=dropout_at)
    model = builder(rng=rng, **kwargs)
    randomize_output_layer(model, rng)
    first = next(i for i, layer in enumerate(model) if isinstance(layer, (nn.Linear, nn.Conv2d)))
    x = (rng.random((3, 1, 28, 28)) * 255).astype(input_dtype)
    seen = forward_backward_dtypes(model, x, rng.integers(0, 10, size=3))
    before = {f"{way} {i} {type(layer).__name__}" for i, layer in enumerate(model) if i < first
              for way in ("forward", "backward")}
    wrong = [(step, str(dt)) for step, dt in seen if dt != F32 and step not in before]
    assert not wrong, f"{input_dtype} input: expected float32 from layer {first} on, got: {wrong}"
    follows = {F32, input_dtype}
    wrong = [(step, str(dt)) for step, dt in seen if step in before and dt not in follows]
    assert not wrong, f"{input_dtype} input: layers before {first} follow their input, got: {wrong}"


@pytest.mark.parametrize("builder", [models.cnn, models.mlp], ids=lambda b: b.__name__)
def test_float64_end_to_end(rng, builder):
    model = builder(dropout=0.2, rng=rng, dtype=F64)
    randomize_output_layer(model, rng)
    seen = forward_backward_dtypes(model, rng.standard_normal((3, 1, 28, 28)), rng.integers(0, 10, size=3))
    wrong = [(step, str(dt)) for step, dt in seen if dt != F64]
    assert not wrong, f"expected float64 everywhere, got: {wrong}"


DTYPE_LAYERS = {
    "Linear": (lambda dt: nn.Linear(12, 5, rng=np.random.default_rng(0), dtype=dt), (4, 12)),
    "Conv2d": (lambda dt: nn.Conv2d(2, 3, 3, padding=1, rng=np.random.default_rng(0), dtype=dt), (2, 2, 6, 6)),
    "MaxPool2d": (lambda dt: nn.MaxPool2d(2), (2, 2, 6, 6)),
    "AvgPool2d": (lambda dt: nn.AvgPool2d(3, stride=2, padding=1), (2, 2, 6, 6)),
    "BatchNorm1d": (lambda dt: nn.BatchNorm1d(12, dtype=dt), (4, 12)),
    "BatchNorm2d": (lambda dt: nn.BatchNorm2d(2, dtype=dt), (2, 2, 6, 6)),
    "ReLU": (lambda dt: nn.ReLU(), (2, 2, 6, 6)),
    "Sigmoid": (lambda dt: nn.Sigmoid(), (2, 2, 6, 6)),
    "Tanh": (lambda dt: nn.Tanh(), (2, 2, 6, 6)),
    "Flatten": (lambda dt: nn.Flatten(), (2, 2, 6, 6)),
    "Dropout": (lambda dt: nn.Dropout(0.5, rng=np.random.default_rng(0)), (2, 2, 6, 6)),
}


@pytest.mark.parametrize("name", sorted(DTYPE_LAYERS))
@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_every_layer_keeps_its_dtype(rng, name, dtype):
    """Input, output, dx and parameter gradients all in the layer's dtype (no float64 temporaries leak out)."""
    factory, shape = DTYPE_LAYERS[name]
    layer = factory(dtype)
    x = rng.standard_normal(shape).astype(dtype)
    y = layer(x)
    dx = layer.backward(rng.standard_normal(y.shape).astype(dtype))
    got = {"y": y.dtype, "dx": dx.dtype} | {f"{n}.grad": p.grad.dtype for n, p in layer.named_parameters()}
    assert all(dt == dtype for dt in got.values()), f"{name}({dtype}): {got}"


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_losses_keep_the_output_dtype(rng, dtype):
    output = rng.standard_normal((4, 3)).astype(dtype)
    for loss_fn, target in [(nn.SoftmaxCrossEntropyLoss(), np.array([0, 2, 1, 1])),
                            (nn.MSELoss(), np.array([0, 2, 1, 1])),
                            (nn.MSELoss(), rng.standard_normal((4, 3)))]:  # a float64 target for a float32 output
        value = loss_fn(output, target)
        assert isinstance(value, float), f"{type(loss_fn).__name__} returned {type(value)}, expected a Python float"
        grad = loss_fn.backward()
        assert grad.dtype == dtype, f"{type(loss_fn).__name__}: gradient dtype {grad.dtype}, expected {dtype}"


@pytest.mark.parametrize("factory", [
    lambda rng, dt: nn.Linear(3, 2, rng=rng, dtype=dt),
    lambda rng, dt: nn.Conv2d(1, 2, 3, rng=rng, dtype=dt),
    lambda rng, dt: nn.BatchNorm2d(2, dtype=dt),
], ids=["Linear", "Conv2d", "BatchNorm2d"])
def test_parameter_dtypes(rng, factory):
    for requested, expected in [(None, F32), (np.float32, F32), (np.float64, F64), ("float64", F64)]:
        layer = factory(rng, requested)
        got = {name: (p.data.dtype, p.grad.dtype) for name, p in layer.named_parameters()}
        assert all(d == g == expected for d, g in got.values()), f"dtype={requested!r}: {got}, expected {expected}"


@pytest.mark.parametrize("bad", [np.float16, np.int32, "complex128"])
def test_unsupported_dtype_is_rejected(rng, bad):
    with pytest.raises(ValueError, match="float32 or float64"):
        nn.Linear(2, 2, rng=rng, dtype=bad)


# --- Dropout ------------------------------------------------------------------------------

@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_p_is_the_drop_probability_with_inverted_scaling(rng, p):
    x = np.ones((200, 500), dtype=F32)
    y = nn.Dropout(p, rng=rng)(x)
    dropped = np.mean(y == 0)
    # 100k Bernoulli draws: the standard error of the fraction is <= 0.0016.
    assert abs(dropped - p) < 0.01, f"fraction dropped {dropped:.4f} / p {p}"
    kept = y[y != 0]
    np.testing.assert_allclose(kept, 1 / (1 - p), rtol=1e-6, err_msg="kept values / 1/(1-p)")
    assert abs(y.mean() - 1.0) < 0.03, f"inverted dropout keeps the mean: mean(y) {y.mean():.4f} / mean(x) 1.0"


def test_dropout_backward_is_the_forward_mask_times_scale(rng):
    layer = nn.Dropout(0.4, rng=rng)
    x = rng.uniform(0.5, 2.0, size=(10, 30))  # nonzero: y / x recovers mask / (1 - p)
    y = layer(x)
    dy = rng.standard_normal(x.shape)
    dx = layer.backward(dy)
    np.testing.assert_allclose(dx, dy * (y / x), rtol=1e-12, err_msg="dx / dy * mask / (1-p)")


def test_dropout_draws_a_fresh_mask_each_forward_reproducibly():
    x = np.ones((20, 20), dtype=F32)
    a = nn.Dropout(0.5, rng=np.random.default_rng(1))
    b = nn.Dropout(0.5, rng=np.random.default_rng(1))
    first, second = a(x), a(x)
    assert not np.array_equal(first, second), "two training forwards reused the same mask"
    np.testing.assert_array_equal(b(x), first, err_msg="same seed, same first mask")
    np.testing.assert_array_equal(b(x), second, err_msg="same seed, same second mask")


def test_dropout_eval_mode_is_identity(rng):
    layer = nn.Dropout(0.9, rng=rng).eval()
    x = rng.standard_normal((4, 7)).astype(F32)
    np.testing.assert_array_equal(layer(x), x, err_msg="eval-mode dropout output / input")
    dy = rng.standard_normal((4, 7)).astype(F32)
    np.testing.assert_array_equal(layer.backward(dy), dy, err_msg="eval-mode dropout dx / dy")


def test_dropout_p0_is_identity_in_training(rng):
    layer = nn.Dropout(0.0, rng=rng)
    assert layer.training
    x = rng.standard_normal((4, 7)).astype(F32)
    np.testing.assert_array_equal(layer(x), x, err_msg="p=0 dropout output / input")
    np.testing.assert_array_equal(layer.backward(2 * x), 2 * x, err_msg="p=0 dropout dx / dy")


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, float("nan")])
def test_dropout_invalid_p_raises(p):
    with pytest.raises(ValueError, match="dropout probability"):
        nn.Dropout(p)


# --- parameters, names, modes ----------------------------------------------------------------

def test_cnn_parameter_names_follow_pytorch_state_dict_keys(rng):
    model = models.cnn(rng=rng)
    names = [name for name, _ in model.named_parameters()]
    expected = ["0.weight", "0.bias", "3.weight", "3.bias", "7.weight", "7.bias", "9.weight", "9.bias"]
    assert names == expected, f"npconv {names} / expected {expected}"
    assert [p.shape for p in model.parameters()] == [
        (8, 1, 3, 3), (8,), (16, 8, 3, 3), (16,), (128, 784), (128,), (10, 128), (10,),
    ]
    # parameters() is named_parameters() without names: the same objects, in the same order.
    assert all(a is b for a, (_, b) in zip(model.parameters(), model.named_parameters(), strict=True))


def test_parameter_names_follow_pytorch_with_dropout_and_mlp(torch, rng):
    """npconv names == the state_dict keys of the equivalent torch.nn.Sequential (dropout shifts indices)."""
    tnn = torch.nn
    cases = {
        "cnn": (models.cnn(rng=rng), tnn.Sequential(
            tnn.Conv2d(1, 8, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
            tnn.Conv2d(8, 16, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
            tnn.Flatten(), tnn.Linear(784, 128), tnn.ReLU(), tnn.Linear(128, 10))),
        "cnn+dropout before-conv": (models.cnn(0.5, "before-conv", rng=rng), tnn.Sequential(
            tnn.Dropout(0.5), tnn.Conv2d(1, 8, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
            tnn.Dropout(0.5), tnn.Conv2d(8, 16, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
            tnn.Flatten(), tnn.Linear(784, 128), tnn.ReLU(), tnn.Linear(128, 10))),
        "mlp+dropout before-fc": (models.mlp(0.5, "before-fc", rng=rng), tnn.Sequential(
            tnn.Flatten(), tnn.Dropout(0.5), tnn.Linear(784, 128), tnn.ReLU(),
            tnn.Dropout(0.5), tnn.Linear(128, 10))),
    }
    for case, (ours, theirs) in cases.items():
        mine = [(name, tuple(p.shape)) for name, p in ours.named_parameters()]
        torch_keys = [(key, tuple(t.shape)) for key, t in theirs.state_dict().items()]
        assert mine == torch_keys, f"{case}: npconv / torch\n{mine}\n{torch_keys}"


def test_train_and_eval_propagate_to_every_layer(rng):
    model = models.cnn(dropout=0.5, dropout_at="before-pool", rng=rng)
    randomize_output_layer(model, rng)
    assert model.eval() is model, "eval() returns the model"
    still_training = [type(layer).__name__ for layer in model if layer.training]
    assert not still_training, f"eval() did not reach: {still_training}"
    x = rng.standard_normal((2, 1, 28, 28)).astype(F32)
    np.testing.assert_array_equal(model(x), model(x), err_msg="eval mode must be deterministic")
    assert model.train() is model, "train() returns the model"
    not_training = [type(layer).__name__ for layer in model if not layer.training]
    assert not not_training, f"train() did not reach: {not_training}"
    assert not np.array_equal(model(x), model(x)), "training mode: dropout must change the output"
    model.train(False)
    assert all(not layer.training for layer in model), "train(False) must equal eval()"


def test_train_eval_reaches_nested_containers(rng):
    inner = nn.Sequential(nn.Dropout(0.5, rng=rng), nn.ReLU())
    outer = nn.Sequential(nn.Linear(2, 2, rng=rng), inner)
    outer.eval()
    assert not inner.training and not inner[0].training, "eval() did not reach a nested Sequential"
    outer.train()
    assert inner.training and inner[0].training, "train() did not reach a nested Sequential"
    names = [name for name, _ in outer.named_parameters()]
    assert names == ["0.weight", "0.bias"], names


def test_model_zero_grad(rng):
    model = models.mlp(rng=rng)
    randomize_output_layer(model, rng)
    for p in model.parameters():
        p.grad[...] = 1.0
    model.zero_grad()
    assert all(np.all(p.grad == 0) for p in model.parameters())


# --- numerical safety ------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_relu_of_infinities(dtype):
    x = np.array([-np.inf, -1.0, 0.0, 2.0, np.inf], dtype=dtype)
    with np.errstate(invalid="ignore"):
        y = nn.ReLU()(x)
    np.testing.assert_array_equal(y, [0.0, 0.0, 0.0, 2.0, np.inf], err_msg="npconv / max(x, 0)")


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_sigmoid_extreme_inputs(dtype):
    layer = nn.Sigmoid()
    x = np.array([-1000.0, -100.0, -30.0, 0.0, 30.0, 100.0, 1000.0], dtype=dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # exp(-1000) may underflow to 0, never overflow
        y = layer(x)
        dx = layer.backward(np.ones_like(x))
    x64 = x.astype(F64)
    with np.errstate(under="ignore"):  # the float64 value written each way that cannot overflow
        expected = np.where(x64 >= 0, 1 / (1 + np.exp(-np.abs(x64))), np.exp(-np.abs(x64)) / (1 + np.exp(-np.abs(x64))))
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-30, err_msg="npconv / float64 sigmoid")
    assert y[0] == 0.0 and y[-1] == 1.0 and y[3] == 0.5, f"sigmoid(-1000, 0, 1000) = {y[0]}, {y[3]}, {y[-1]}"
    assert np.all(np.isfinite(dx)), f"non-finite sigmoid gradient {dx}"
    assert dx[3] == 0.25 and dx[0] == 0 and dx[-1] == 0, f"sigmoid'(0, -1000, 1000) = {dx[3]}, {dx[0]}, {dx[-1]}"
    assert y.dtype == dtype and dx.dtype == dtype


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_softmax_cross_entropy_extreme_logits(dtype):
    loss_fn = nn.SoftmaxCrossEntropyLoss()
    logits = np.array([[1000.0, -1000.0, 0.0], [-1000.0, 1000.0, 0.0]], dtype=dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        right = loss_fn(logits, np.array([0, 1]))
        d_right = loss_fn.backward()
        wrong = loss_fn(logits, np.array([1, 0]))
        d_wrong = loss_fn.backward()
    assert 0 <= right < 1e-6, f"confidently right: loss {right}, expected ~0"
    # -log p(wrong class) = 1000 - (-1000) = 2000 per example.
    assert abs(wrong - 2000) < 1e-3 * 2000, f"confidently wrong: loss {wrong}, expected ~2000"
    assert np.all(np.isfinite(d_right)) and np.all(np.isfinite(d_wrong))
    np.testing.assert_allclose(d_right, 0, atol=1e-6, err_msg="gradient of a confident right answer / 0")
    # (p - onehot) / N with p = onehot(argmax) and N = 2
    expected = np.array([[0.5, -0.5, 0.0], [-0.5, 0.5, 0.0]])
    np.testing.assert_allclose(d_wrong, expected, atol=1e-6, err_msg="npconv / (p - onehot) / N")
    assert d_wrong.dtype == dtype


def test_softmax_cross_entropy_known_values():
    loss_fn = nn.SoftmaxCrossEntropyLoss()
    assert abs(loss_fn(np.zeros((4, 10)), np.arange(4)) - math.log(10)) < 1e-12, "uniform logits: loss = ln 10"
    logits = np.array([[1.0, 2.0, 3.0]])
    expected = -(1.0 - math.log(math.exp(1) + math.exp(2) + math.exp(3)))
    assert abs(loss_fn(logits, np.array([0])) - expected) < 1e-12
    # Shifting every logit of a row by a constant changes nothing.
    shifted = loss_fn(logits + 500.0, np.array([0]))
    assert abs(shifted - expected) < 1e-9, f"shifted logits: {shifted} / {expected}"


@pytest.mark.parametrize("labels", [np.array([0, 3]), np.array([0.0, 1.0]), np.array([[0], [1]]), np.array([0, -1])],
                         ids=["out-of-range", "float", "2-d", "negative"])
def test_softmax_cross_entropy_rejects_bad_labels(labels):
    with pytest.raises(ValueError, match="labels"):
        nn.SoftmaxCrossEntropyLoss()(np.zeros((2, 3)), labels)


def test_mse_known_values_and_one_hot_labels():
    loss_fn = nn.MSELoss()
    output = np.array([[0.5, 0.0, 1.0], [0.0, 2.0, 0.0]])
    # one-hot of [2, 1]: [[0, 0, 1], [0, 1, 0]]; squared errors 0.25 + 0 + 0 + 0 + 1 + 0 over 6 elements.
    assert abs(loss_fn(output, np.array([2, 1])) - 1.25 / 6) < 1e-15
    explicit = loss_fn(output, np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))
    assert abs(explicit - 1.25 / 6) < 1e-15, f"explicit one-hot target: {explicit} / {1.25 / 6}"
    with pytest.raises(ValueError, match="shape"):
        loss_fn(output, np.zeros((3, 2)))


@pytest.mark.parametrize("builder", [models.cnn, models.mlp], ids=lambda b: b.__name__)
def test_backward_without_input_grad_fills_the_same_parameter_grads(rng, builder):
    """``model.backward(dy, input_grad=False)`` skips dx of the first layer, nothing else."""
    model = randomize_output_layer(builder(rng=rng, dtype=F64), rng)
    x = rng.standard_normal((3, 1, 28, 28))
    dy = rng.standard_normal((3, 10))
    grads = []
    for input_grad in (True, False):
        model.zero_grad()
        model(x)
        dx = model.backward(dy, input_grad=input_grad)
        assert (dx is None) == (not input_grad), f"input_grad={input_grad}: dx is {type(dx)}"
        grads.append({name: p.grad.copy() for name, p in model.named_parameters()})
    for name in grads[0]:
        np.testing.assert_array_equal(grads[1][name], grads[0][name], err_msg=name)


def test_no_grad_keeps_nothing_and_changes_no_value(rng):
    model = models.cnn(rng=rng).eval()
    x = rng.standard_normal((3, 1, 28, 28)).astype(F32)
    expected = model(x)
    with nn.no_grad():
        assert not nn.grad_enabled()
        np.testing.assert_array_equal(model(x), expected, err_msg="no_grad / normal forward")
    assert nn.grad_enabled(), "no_grad must restore the setting"
    with pytest.raises(RuntimeError, match="no_grad"):
        model.backward(np.ones((3, 10), F32))


def test_relu_backward_after_no_grad_forward_is_an_error(rng):
    relu = nn.ReLU()
    relu(rng.standard_normal(5))  # a forward with gradients: a mask is kept ...
    with nn.no_grad():
        relu(rng.standard_normal(5))  # ... and must not be reused after this one
    with pytest.raises(RuntimeError, match="no_grad"):
        relu.backward(np.ones(5))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_flatten_and_linear_results_do_not_depend_on_the_memory_layout(rng, layout):
    """A batch-last (N, C, H, W) input flattens to a batch-last view; values and gradients are unchanged."""
    flatten, linear = nn.Flatten(), nn.Linear(2 * 3 * 4, 5, rng=rng, dtype=F64)
    x = rng.standard_normal((6, 2, 3, 4))
    flat = flatten(in_layout(x, layout))
    np.testing.assert_array_equal(flat, x.reshape(6, -1), err_msg=f"Flatten of a {layout} input")
    y = linear(flat)
    assert_close(y, x.reshape(6, -1) @ linear.weight.data.T, "Linear forward")
    dy = rng.standard_normal(y.shape)
    dx = flatten.backward(linear.backward(dy))
    assert dx.shape == x.shape, f"dx shape {dx.shape} != x shape {x.shape}"
    assert_close(dx, (dy @ linear.weight.data).reshape(x.shape), "Linear + Flatten dx")
    assert_close(linear.weight.grad, dy.T @ x.reshape(6, -1), "Linear dW")
