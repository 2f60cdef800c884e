"""npconv layers, losses and models against PyTorch, the "gold" implementation.

npconv's weights are copied into the equivalent torch module; the same input and
upstream gradient go through both, and outputs, input gradients and parameter
gradients must agree: to ~1e-12 in float64, to float32 rounding in float32.
Skipped cleanly when torch is not installed.
"""

import numpy as np
import pytest

from dependencies import require

from npconv import models, nn, optim

torch = require("torch")
torch.set_num_threads(1)
tnn = torch.nn

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
TORCH_DTYPE = {F32: torch.float32, F64: torch.float64}
# (rtol, atol) per dtype: float64 agrees up to summation order. In float32 every gradient entry is a
# sum of hundreds of products, and an entry that nearly cancels keeps the absolute rounding error of
# the big terms: so atol is relative to the largest magnitude in the array (or 1). Measured against a
# float64 run of the same batch-norm network (20 seeds, 3 steps), each library's float32 gradients are
# off by up to 3e-6 of that magnitude (npconv 3.1e-6, PyTorch 2.6e-6), so two of them may differ by
# twice that: atol 1e-5 of it (~80 ulps). float64 is where agreement is checked tightly.
TOL = {F64: (1e-10, 1e-12), F32: (1e-5, 1e-5)}
BOTH_DTYPES = pytest.mark.parametrize("dtype", [F64, F32], ids=str)


def assert_matches(mine, theirs, what, dtype):
    rtol, atol = TOL[np.dtype(dtype)]
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs)
    if np.dtype(dtype) == F32:
        atol *= max(1.0, float(np.max(np.abs(theirs), initial=0.0)))
    assert np.shape(mine) == theirs.shape, f"{what}: shape npconv {np.shape(mine)} / torch {theirs.shape}"
    np.testing.assert_allclose(mine, theirs, rtol=rtol, atol=atol, err_msg=f"{what}: npconv / torch")


def copy_weights(ours, theirs):
    """Copy every npconv parameter and buffer into the torch module of the same state_dict key."""
    state = {name: torch.from_numpy(np.array(value)) for name, value in ours.state_dict().items()}
    theirs.load_state_dict(state, strict=True)


def compare_module(ours, theirs, x, rng, dtype, what):
    """Forward both, backward the same random dy, compare y, dx and every parameter gradient."""
    x = np.asarray(x, dtype=dtype)
    copy_weights(ours, theirs)
    xt = torch.tensor(x, requires_grad=True)

    y = ours(x)
    yt = theirs(xt)
    assert_matches(y, yt, f"{what} output", dtype)
    assert y.dtype == dtype, f"{what}: output dtype {y.dtype}, expected {dtype}"

    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = ours.backward(dy)
    yt.backward(torch.from_numpy(dy))
    assert_matches(dx, xt.grad, f"{what} dx", dtype)
    torch_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        assert_matches(p.grad, torch_params[name].grad, f"{what} grad of {name}", dtype)


# --- layers -----------------------------------------------------------------------

@BOTH_DTYPES
def test_linear(rng, dtype):
    ours = nn.Linear(20, 7, rng=rng, dtype=dtype)
    ours.bias.data[...] = rng.standard_normal(7)
    theirs = tnn.Linear(20, 7, dtype=TORCH_DTYPE[dtype])
    compare_module(ours, theirs, rng.standard_normal((5, 20)), rng, dtype, "Linear")


@pytest.mark.parametrize("kernel_size", [1, 3, (2, 3), 5], ids=str)
@pytest.mark.parametrize("stride", [1, 2, 3], ids=lambda s: f"s{s}")
@pytest.mark.parametrize("padding", [0, 1, 2], ids=lambda p: f"p{p}")
def test_conv2d_float64(rng, kernel_size, stride, padding):
    ours = nn.Conv2d(3, 4, kernel_size, stride=stride, padding=padding, rng=rng, dtype=F64)
    ours.bias.data[...] = rng.standard_normal(4)
    theirs = tnn.Conv2d(3, 4, kernel_size, stride=stride, padding=padding, dtype=torch.float64)
    x = rng.standard_normal((2, 3, 9, 7))
    compare_module(ours, theirs, x, rng, F64, f"Conv2d({kernel_size}, s={stride}, p={padding})")


@pytest.mark.parametrize("kernel_size, stride, padding", [(3, 1, 1), ((2, 3), (2, 1), (1, 0)), (5, 2, 2)], ids=str)
def test_conv2d_float32(rng, kernel_size, stride, padding):
    ours = nn.Conv2d(8, 16, kernel_size, stride=stride, padding=padding, rng=rng, dtype=F32)
    ours.bias.data[...] = rng.standard_normal(16)
    theirs = tnn.Conv2d(8, 16, kernel_size, stride=stride, padding=padding, dtype=torch.float32)
    compare_module(ours, theirs, rng.standard_normal((4, 8, 14, 14)), rng, F32, "Conv2d float32")


POOL_CONFIGS = [(2, None), (2, 1), (3, None), (3, 1), (3, 2), (2, 3), ((2, 3), (1, 2))]


@pytest.mark.parametrize("kernel_size, stride", POOL_CONFIGS, ids=str)
@pytest.mark.parametrize("values", ["distinct", "ties", "constant"])
@BOTH_DTYPES
def test_maxpool2d(rng, kernel_size, stride, values, dtype):
    shape = (2, 3, 7, 5)
    if values == "distinct":
        x = rng.standard_normal(shape)
    elif values == "ties":  # torch also routes a tie to the first maximum
        x = rng.integers(0, 3, size=shape).astype(float)
    else:
        x = np.full(shape, -0.4242)
    compare_module(nn.MaxPool2d(kernel_size, stride=stride), tnn.MaxPool2d(kernel_size, stride=stride), x, rng, dtype,
                   f"MaxPool2d({kernel_size}, stride={stride}) on {values} values")


@pytest.mark.parametrize("ours, theirs", [(nn.ReLU, tnn.ReLU), (nn.Sigmoid, tnn.Sigmoid), (nn.Tanh, tnn.Tanh),
                                          (nn.Flatten, tnn.Flatten)], ids=lambda c: c.__name__)
@BOTH_DTYPES
def test_elementwise(rng, ours, theirs, dtype):
    x = 4 * rng.standard_normal((3, 2, 5, 4))
    x[0, 0, 0, :] = [0.0, -50.0, 50.0, 1e-3]  # relu'(0) = 0 in both; saturated sigmoid/tanh
    compare_module(ours(), theirs(), x, rng, dtype, ours.__name__)


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_default_dropout_scales_like_torch_in_float64(rng, torch, p):
    """A default Dropout in a float64 network scales kept units by 1/(1-p) computed in float64, as PyTorch does:
    the same mask through both gives the same output and gradient to 1e-12 (no float32-rounded scale)."""
    x = rng.uniform(0.5, 2.0, size=(64, 50))
    model = nn.Sequential(nn.Linear(50, 50, rng=rng, dtype=F64), nn.Dropout(p, rng=np.random.default_rng(1)))
    y = model(x)
    assert y.dtype == F64
    kept = y != 0
    assert 0 < kept.mean() < 1, "the mask must drop some units and keep others"
    # PyTorch's own float64 dropout of ones: its kept entries are its scale 1/(1-p), in float64.
    torch.manual_seed(0)
    scaled_ones = torch.nn.functional.dropout(torch.ones(10_000, dtype=torch.float64), p, training=True)
    torch_scale = scaled_ones.max().item()
    h = model[0](x)  # the Linear's output: y = h * mask * scale
    np.testing.assert_allclose(y[kept] / h[kept], torch_scale, rtol=1e-12, atol=0, err_msg="npconv / torch scale")
    ht = torch.tensor(h, requires_grad=True)
    yt = ht * torch.tensor(kept.astype(np.float64)) * torch_scale  # the same mask, torch's scale
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=0, err_msg="npconv / torch")
    dy = rng.standard_normal(y.shape)
    yt.backward(torch.tensor(dy))
    dh = model[1].backward(dy)
    np.testing.assert_allclose(dh, ht.grad.numpy(), rtol=1e-12, atol=0, err_msg="npconv / torch dx")


@pytest.mark.parametrize("kernel_size, stride, padding", [(2, None, 0), (3, 1, 1), (3, 2, 1), ((2, 3), (1, 2), (1, 0))],
                         ids=str)
@BOTH_DTYPES
def test_avgpool2d(rng, kernel_size, stride, padding, dtype):
    compare_module(nn.AvgPool2d(kernel_size, stride=stride, padding=padding),
                   tnn.AvgPool2d(kernel_size, stride=stride, padding=padding), rng.standard_normal((2, 3, 7, 6)), rng,
                   dtype, f"AvgPool2d({kernel_size}, stride={stride}, padding={padding})")


BATCHNORMS = [(nn.BatchNorm1d, tnn.BatchNorm1d, (8, 5)), (nn.BatchNorm1d, tnn.BatchNorm1d, (4, 5, 3)),
              (nn.BatchNorm2d, tnn.BatchNorm2d, (4, 5, 3, 6))]


@pytest.mark.parametrize("ours, theirs, shape", BATCHNORMS, ids=lambda v: getattr(v, "__name__", str(v)))
@pytest.mark.parametrize("mode", ["train", "eval"])
@BOTH_DTYPES
def test_batchnorm(rng, ours, theirs, shape, mode, dtype):
    mine = ours(shape[1], dtype=dtype)
    torch_bn = theirs(shape[1], dtype=TORCH_DTYPE[dtype])
    mine.weight.data[...] = rng.standard_normal(shape[1])
    mine.bias.data[...] = rng.standard_normal(shape[1])
    mine.running_mean.data[...] = rng.standard_normal(shape[1])
    mine.running_var.data[...] = rng.uniform(0.5, 2, shape[1])
    mine.train(mode == "train")
    torch_bn.train(mode == "train")
    compare_module(mine, torch_bn, 3 * rng.standard_normal(shape) + 1, rng, dtype, f"{ours.__name__} {mode}")
    for name, value in torch_bn.state_dict().items():  # the running statistics moved the same way
        assert_matches(mine.state_dict()[name], value, f"{ours.__name__} {name}", dtype)


def bn_convnet(ours, dtype, rng=None):
    """conv - BN2d - ReLU - max-pool - flatten - linear - BN1d - ReLU - linear, in npconv or torch."""
    if ours:
        return nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1, rng=rng, dtype=dtype), nn.BatchNorm2d(4, dtype=dtype), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 5 * 5, 12, rng=rng, dtype=dtype),
            nn.BatchNorm1d(12, momentum=0.3, dtype=dtype), nn.ReLU(), nn.Linear(12, 10, rng=rng, dtype=dtype))
    return tnn.Sequential(
        tnn.Conv2d(1, 4, 3, padding=1), tnn.BatchNorm2d(4), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Flatten(),
        tnn.Linear(100, 12), tnn.BatchNorm1d(12, momentum=0.3), tnn.ReLU(), tnn.Linear(12, 10)).to(TORCH_DTYPE[dtype])


def assert_step_matches(ours, theirs, x, labels, what, dtype):
    """Forward, softmax cross-entropy and backward through both networks (gradients accumulate into ``.grad``):
    the logits, the loss, dx and every parameter gradient agree."""
    loss_fn = nn.SoftmaxCrossEntropyLoss()
    logits = ours(x)
    loss = loss_fn(logits, labels)
    dx = ours.backward(loss_fn.backward())
    xt = torch.tensor(x, requires_grad=True)
    logits_t = theirs(xt)
    loss_t = tnn.functional.cross_entropy(logits_t, torch.from_numpy(labels))
    loss_t.backward()
    assert_matches(logits, logits_t, f"{what} logits", dtype)
    assert_matches(loss, loss_t, f"{what} loss", dtype)
    assert_matches(dx, xt.grad, f"{what} dx", dtype)
    torch_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        assert_matches(p.grad, torch_params[name].grad, f"{what} grad of {name}", dtype)


@BOTH_DTYPES
def test_batchnorm_network_trains_like_torch(rng, dtype):
    """Five SGD steps of a network with both batch norms: at every step the logits, the loss, dx and every
    parameter gradient agree, and after them every weight and running statistic, and the eval-mode output."""
    ours, theirs = bn_convnet(True, dtype, rng), bn_convnet(False, dtype)
    copy_weights(ours, theirs)
    opt = optim.SGD(ours.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    opt_t = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for step in range(5):
        x = rng.standard_normal((6, 1, 10, 10)).astype(dtype)
        labels = rng.integers(0, 10, size=6)
        opt.zero_grad()
        opt_t.zero_grad()
        assert_step_matches(ours, theirs, x, labels, f"step {step}", dtype)
        opt.step()
        opt_t.step()
    state = ours.state_dict()
    assert list(state) == list(theirs.state_dict()), "the same state_dict names in the same order"
    for name, value in theirs.state_dict().items():
        assert_matches(state[name], value, f"after 5 steps: {name}", dtype)
    x = rng.standard_normal((3, 1, 10, 10)).astype(dtype)
    with nn.no_grad(), torch.no_grad():
        assert_matches(ours.eval()(x), theirs.eval()(torch.from_numpy(x)), "eval-mode logits", dtype)


# --- losses -----------------------------------------------------------------------

@BOTH_DTYPES
@pytest.mark.parametrize("scale", [1.0, 30.0], ids=lambda s: f"logit-scale{s}")
def test_softmax_cross_entropy_matches_torch_cross_entropy(rng, dtype, scale):
    logits = (scale * rng.standard_normal((8, 10))).astype(dtype)
    labels = rng.integers(0, 10, size=8)
    ours = nn.SoftmaxCrossEntropyLoss()
    loss = ours(logits, labels)
    dlogits = ours.backward()

    zt = torch.tensor(logits, requires_grad=True)
    lt = tnn.CrossEntropyLoss()(zt, torch.from_numpy(labels))
    lt.backward()
    assert_matches(loss, lt, "cross-entropy loss", dtype)
    assert_matches(dlogits, zt.grad, "cross-entropy d/dlogits", dtype)


@BOTH_DTYPES
def test_summed_cross_entropy_matches_torch_reduction_sum(rng, dtype):
    logits = (3 * rng.standard_normal((8, 10))).astype(dtype)
    labels = rng.integers(0, 10, size=8)
    ours = nn.SoftmaxCrossEntropyLoss(reduction="sum")
    loss = ours(logits, labels)
    dlogits = ours.backward()

    zt = torch.tensor(logits, requires_grad=True)
    lt = tnn.CrossEntropyLoss(reduction="sum")(zt, torch.from_numpy(labels))
    lt.backward()
    assert_matches(loss, lt, "summed cross-entropy loss", dtype)
    assert_matches(dlogits, zt.grad, "summed cross-entropy d/dlogits", dtype)


@BOTH_DTYPES
@pytest.mark.parametrize("target_kind", ["same-shape", "labels", "4-d"])
def test_mse_matches_torch_mse(rng, dtype, target_kind):
    if target_kind == "labels":
        output = rng.standard_normal((6, 4)).astype(dtype)
        target = rng.integers(0, 4, size=6)
        torch_target = tnn.functional.one_hot(torch.from_numpy(target), 4).to(TORCH_DTYPE[dtype])
    else:
        shape = (6, 4) if target_kind == "same-shape" else (2, 3, 4, 5)
        output = rng.standard_normal(shape).astype(dtype)
        target = rng.standard_normal(shape).astype(dtype)
        torch_target = torch.from_numpy(target)
    ours = nn.MSELoss()
    loss = ours(output, target)
    dout = ours.backward()

    ot = torch.tensor(output, requires_grad=True)
    lt = tnn.MSELoss()(ot, torch_target)
    lt.backward()
    assert_matches(loss, lt, "MSE loss", dtype)
    assert_matches(dout, ot.grad, "MSE d/doutput", dtype)


# --- whole models -----------------------------------------------------------------

def torch_cnn(dtype):
    return tnn.Sequential(
        tnn.Conv2d(1, 8, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Conv2d(8, 16, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Flatten(), tnn.Linear(16 * 7 * 7, 128), tnn.ReLU(), tnn.Linear(128, 10),
    ).to(TORCH_DTYPE[dtype])


def torch_mlp(dtype):
    return tnn.Sequential(tnn.Flatten(), tnn.Linear(784, 128), tnn.ReLU(), tnn.Linear(128, 10)).to(TORCH_DTYPE[dtype])


def torch_lenet5(dtype):
    return tnn.Sequential(
        tnn.Conv2d(1, 6, 5, padding=2), tnn.ReLU(), tnn.AvgPool2d(2), tnn.Conv2d(6, 16, 5), tnn.ReLU(),
        tnn.AvgPool2d(2), tnn.Flatten(), tnn.Linear(400, 120), tnn.ReLU(), tnn.Linear(120, 84), tnn.ReLU(),
        tnn.Linear(84, 10),
    ).to(TORCH_DTYPE[dtype])


def torch_cnn_bn(dtype):
    return tnn.Sequential(
        tnn.Conv2d(1, 16, 3, padding=1), tnn.BatchNorm2d(16), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Conv2d(16, 32, 3, padding=1), tnn.BatchNorm2d(32), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Flatten(), tnn.Linear(32 * 7 * 7, 128), tnn.BatchNorm1d(128), tnn.ReLU(), tnn.Linear(128, 10),
    ).to(TORCH_DTYPE[dtype])


TORCH_TWINS = {"cnn": torch_cnn, "mlp": torch_mlp, "lenet5": torch_lenet5, "cnn-bn": torch_cnn_bn}


def test_every_preset_has_a_torch_twin_here():
    assert set(TORCH_TWINS) == set(models.MODELS)


@pytest.mark.parametrize("name", models.MODELS)
@BOTH_DTYPES
def test_whole_model_with_loss(rng, name, dtype):
    """Model + cross-entropy, forward and backward, against the torch model with the same weights
    (training mode: batch normalization on the batch's statistics)."""
    ours = models.build_model(name, rng=rng, dtype=dtype)
    for layer in ours:
        if isinstance(layer, (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d)):
            layer.bias.data[...] = 0.1 * rng.standard_normal(layer.bias.shape)
    theirs = TORCH_TWINS[name](dtype)
    copy_weights(ours, theirs)

    # MNIST-like: mostly background, a few bright strokes, normalized.
    images = (rng.random((6, 1, 28, 28)) < 0.2) * rng.random((6, 1, 28, 28))
    x = ((images - 0.1307) / 0.3081).astype(dtype)
    labels = rng.integers(0, 10, size=6)

    assert_step_matches(ours, theirs, x, labels, name, dtype)
    for pname, p in ours.named_parameters():
        assert p.grad.dtype == dtype, f"{pname}.grad dtype {p.grad.dtype}"
