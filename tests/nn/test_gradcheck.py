"""Every layer's backward against centered finite differences, in float64.

For a layer ``y = f(x; params)`` and a random upstream gradient ``dy``,
:func:`npconv.nn.gradcheck.check_layer` compares ``backward(dy)`` (and each
parameter's ``.grad``) with the numerical gradient of ``sum(f(x) * dy)``.
The relative error ``||a - n|| / (||a|| + ||n||)`` must stay below 1e-6;
a real bug gives errors of order 1e-2 to 1 (see the last tests, which prove
the checker notices a wrong gradient).
"""

import numpy as np
import pytest

from conftest import randomize_output_layer

from npconv import models, nn
from npconv.nn.gradcheck import check_layer, numerical_gradient, relative_error

TOL = 1e-6
F64 = np.float64


def assert_gradcheck(layer, x, rng, expected_keys=None):
    """Run ``check_layer`` and assert every relative error is below ``TOL``."""
    errors = check_layer(layer, x, rng)
    if expected_keys is not None:
        assert set(errors) == set(expected_keys), f"checked {sorted(errors)}, expected {sorted(expected_keys)}"
    bad = {name: err for name, err in errors.items() if not err < TOL}
    assert not bad, f"{layer!r}: relative error above {TOL:g} for {bad} (all errors: {errors})"
    return errors


def randomize_bias(layer, rng):
    """Biases start at zero; give them values so that a bias bug cannot hide."""
    layer.bias.data[...] = rng.standard_normal(layer.bias.data.shape)


# --- Linear -------------------------------------------------------------------

@pytest.mark.parametrize("n, in_features, out_features", [(1, 1, 1), (4, 5, 3), (3, 7, 11)])
def test_linear_gradcheck(rng, n, in_features, out_features):
    layer = nn.Linear(in_features, out_features, rng=rng, dtype=F64)
    randomize_bias(layer, rng)
    x = rng.standard_normal((n, in_features))
    assert_gradcheck(layer, x, rng, expected_keys={"x", "weight", "bias"})


# --- Conv2d -------------------------------------------------------------------

CONV_KERNELS = [1, 2, 3, (2, 3), (3, 1)]
CONV_STRIDES = [1, 2, 3]
CONV_PADDINGS = [0, 1, 2]


@pytest.mark.parametrize("kernel_size", CONV_KERNELS, ids=str)
@pytest.mark.parametrize("stride", CONV_STRIDES, ids=lambda s: f"s{s}")
@pytest.mark.parametrize("padding", CONV_PADDINGS, ids=lambda p: f"p{p}")
def test_conv2d_gradcheck(rng, kernel_size, stride, padding):
    # Odd, non-square image so that H/W mix-ups and dropped border rows show.
    layer = nn.Conv2d(2, 3, kernel_size, stride=stride, padding=padding, rng=rng, dtype=F64)
    randomize_bias(layer, rng)
    x = rng.standard_normal((2, 2, 7, 5))
    assert_gradcheck(layer, x, rng, expected_keys={"x", "weight", "bias"})


@pytest.mark.parametrize(
    "kernel_size, stride, padding, hw",
    [
        ((3, 2), (2, 1), (1, 0), (6, 5)),  # a different stride and padding per axis
        ((1, 3), (1, 3), (0, 2), (3, 8)),
        (3, 2, 1, (5, 5)),                 # the stride does not divide the padded size evenly
        (5, 1, 2, (5, 5)),                 # the kernel as large as the image
    ],
)
def test_conv2d_gradcheck_per_axis(rng, kernel_size, stride, padding, hw):
    layer = nn.Conv2d(3, 2, kernel_size, stride=stride, padding=padding, rng=rng, dtype=F64)
    randomize_bias(layer, rng)
    x = rng.standard_normal((2, 3, *hw))
    assert_gradcheck(layer, x, rng)


# --- MaxPool2d ----------------------------------------------------------------

def distinct_values(rng, shape, spacing=1e-2):
    """A random arrangement of values at least ``spacing`` apart: no near-ties.

    A finite difference with step 1e-6 across a near-tie would switch the
    maximum and measure the wrong thing; spacing 1e-2 rules that out.
    """
    size = int(np.prod(shape))
    return (rng.permutation(size) * spacing - size * spacing / 2).reshape(shape)


@pytest.mark.parametrize("kernel_size", [2, 3, (2, 3)], ids=str)
@pytest.mark.parametrize("stride", [None, 1, 2], ids=lambda s: f"s{s}")
@pytest.mark.parametrize("hw", [(7, 5), (6, 6)], ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_maxpool2d_gradcheck(rng, kernel_size, stride, hw):
    layer = nn.MaxPool2d(kernel_size, stride=stride)
    x = distinct_values(rng, (2, 3, *hw))
    assert_gradcheck(layer, x, rng, expected_keys={"x"})


# --- AvgPool2d ----------------------------------------------------------------

@pytest.mark.parametrize("kernel_size, stride, padding", [(2, None, 0), (3, 1, 1), (3, 2, 1), ((2, 3), (1, 2), (1, 0))],
                         ids=str)
def test_avgpool2d_gradcheck(rng, kernel_size, stride, padding):
    layer = nn.AvgPool2d(kernel_size, stride=stride, padding=padding)
    assert_gradcheck(layer, rng.standard_normal((2, 3, 7, 5)), rng, expected_keys={"x"})


# --- BatchNorm1d, BatchNorm2d ----------------------------------------------------

@pytest.mark.parametrize("layer_class, shape", [(nn.BatchNorm1d, (6, 4)), (nn.BatchNorm1d, (3, 4, 5)),
                                                (nn.BatchNorm2d, (3, 4, 5, 3))], ids=str)
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("affine", [True, False], ids=lambda a: f"affine={a}")
def test_batchnorm_gradcheck(rng, layer_class, shape, mode, affine):
    """In training mode every output depends on every input of its channel (through the batch mean and variance)."""
    layer = layer_class(shape[1], affine=affine, dtype=F64)
    if affine:
        layer.weight.data[...] = rng.standard_normal(shape[1])
        randomize_bias(layer, rng)
    layer.running_mean.data[...] = rng.standard_normal(shape[1])
    layer.running_var.data[...] = rng.uniform(0.5, 2.0, shape[1])
    layer.train(mode == "train")
    x = 2 * rng.standard_normal(shape) + 1
    assert_gradcheck(layer, x, rng, expected_keys={"x", "weight", "bias"} if affine else {"x"})


# --- element-wise layers --------------------------------------------------------

def test_relu_gradcheck(rng):
    # |x| >= 0.1: a step of 1e-6 never crosses the kink at 0.
    magnitude = rng.uniform(0.1, 2.0, size=(4, 3, 5))
    x = np.where(rng.random(magnitude.shape) < 0.5, -magnitude, magnitude)
    assert_gradcheck(nn.ReLU(), x, rng, expected_keys={"x"})


@pytest.mark.parametrize("layer_class", [nn.Sigmoid, nn.Tanh], ids=lambda c: c.__name__)
@pytest.mark.parametrize("scale", [1.0, 5.0], ids=lambda s: f"scale{s}")
def test_smooth_activation_gradcheck(rng, layer_class, scale):
    x = scale * rng.standard_normal((4, 3, 5))
    assert_gradcheck(layer_class(), x, rng, expected_keys={"x"})


def test_flatten_gradcheck(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    assert_gradcheck(nn.Flatten(), x, rng, expected_keys={"x"})


class FixedMaskDropout(nn.Module):
    """Dropout whose mask is the same on every call: its generator is re-seeded each forward.

    The finite differences call forward many times; with a fresh mask each time
    they would differentiate noise.
    """

    def __init__(self, p, seed):
        self.dropout = nn.Dropout(p)
        self.seed = seed

    def forward(self, x):
        self.dropout.rng = np.random.default_rng(self.seed)
        return self.dropout(x)

    def backward(self, dy):
        return self.dropout.backward(dy)


@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 0.9])
def test_dropout_gradcheck_training_mode(rng, p):
    layer = FixedMaskDropout(p, seed=7)
    assert layer.dropout.training, "a new Dropout must start in training mode"
    x = rng.standard_normal((4, 50))
    assert_gradcheck(layer, x, rng, expected_keys={"x"})
    if p > 0:
        # Make sure the mask really dropped something (otherwise this checked the identity).
        y = layer(x)
        assert np.any(y == 0), f"p={p}: no element was dropped out of {x.size}"


def test_dropout_gradcheck_eval_mode(rng):
    layer = nn.Dropout(0.5, rng=rng).eval()
    assert_gradcheck(layer, rng.standard_normal((3, 10)), rng, expected_keys={"x"})


# --- a whole model, sampled ----------------------------------------------------

def sampled_gradcheck(model, x, rng, samples_per_array=12, h=1e-6):
    """Relative errors of ``model.backward`` on a random sample of entries of ``x`` and of each parameter.

    The full numerical gradient of the cnn would take ~100k forward passes; a
    random sample of entries of every array checks each one with a few dozen.
    The loss is ``sum(model(x) * dy)`` for a random ``dy``, as in ``check_layer``.
    Returns ``{name: (relative error, norm of the sampled analytic gradient,
    largest sampled numeric gradient)}``.
    """
    dy = rng.standard_normal(model(x).shape)

    def f():
        return float(np.sum(model(x) * dy))

    model(x)
    model.zero_grad()
    dx = model.backward(dy)

    results = {}
    for name, array, analytic in [("x", x, dx)] + [(n, p.data, p.grad) for n, p in model.named_parameters()]:
        picks = rng.choice(array.size, size=min(samples_per_array, array.size), replace=False)
        numeric = numerical_gradient(f, array, h, indices=picks)
        sampled = analytic.reshape(-1)[picks]
        results[name] = (relative_error(sampled, numeric), float(np.linalg.norm(sampled)),
                         float(np.max(np.abs(numeric))))
    return results


@pytest.mark.parametrize("name", models.MODELS)
def test_model_gradcheck_sampled(rng, name):
    """Every preset, in training mode (batch normalization on the batch's statistics)."""
    model = models.build_model(name, rng=rng, dtype=F64)
    randomize_output_layer(model, rng)
    for layer in model:
        if isinstance(layer, (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d)):
            randomize_bias(layer, rng)
    x = rng.standard_normal((3, 1, 28, 28))
    results = sampled_gradcheck(model, x, rng)
    assert set(results) == {"x"} | {name for name, _ in model.named_parameters()}
    # A bias right before a batch normalization has no effect at all (the normalization subtracts every
    # constant per channel): both gradients must be zero, up to rounding, and the relative error means nothing.
    before_bn = {f"{i}.bias" for i in range(len(model) - 1)
                 if isinstance(model[i + 1], (nn.BatchNorm1d, nn.BatchNorm2d))}
    for bias in before_bn:
        _, analytic_norm, numeric_max = results.pop(bias)
        assert analytic_norm < 1e-12 and numeric_max < 1e-7, f"{name}: {bias} gets gradient through a batch norm"
    bad = {layer: err for layer, (err, _, _) in results.items() if not err < TOL}
    assert not bad, f"{name}: relative error above {TOL:g} for {bad}"
    # A check of all-zero gradients proves nothing: most samples must carry gradient.
    empty = [layer for layer, (_, norm, _) in results.items() if norm == 0]
    assert not empty, f"{name}: sampled analytic gradient is all zero for {empty}"


# --- losses -------------------------------------------------------------------

def loss_gradcheck(loss, output, target, upstream):
    """Relative error of ``loss.backward(upstream)`` against finite differences of ``upstream * loss``."""
    loss(output, target)
    analytic = loss.backward(upstream)
    numeric = numerical_gradient(lambda: upstream * loss(output, target), output)
    return relative_error(analytic, numeric)


@pytest.mark.parametrize("upstream", [1.0, 0.37])
@pytest.mark.parametrize("scale", [1.0, 10.0], ids=lambda s: f"logit-scale{s}")
def test_softmax_cross_entropy_gradcheck(rng, upstream, scale):
    logits = scale * rng.standard_normal((6, 10))
    labels = rng.integers(0, 10, size=6)
    err = loss_gradcheck(nn.SoftmaxCrossEntropyLoss(), logits, labels, upstream)
    assert err < TOL, f"SoftmaxCrossEntropyLoss: relative error {err:.3g} >= {TOL:g}"


@pytest.mark.parametrize("reduction, stable", [("sum", True), ("mean", False)])
def test_softmax_cross_entropy_variants_gradcheck(rng, reduction, stable):
    logits = 3 * rng.standard_normal((6, 10))
    labels = rng.integers(0, 10, size=6)
    err = loss_gradcheck(nn.SoftmaxCrossEntropyLoss(reduction=reduction, stable=stable), logits, labels, 0.37)
    assert err < TOL, f"SoftmaxCrossEntropyLoss({reduction!r}, stable={stable}): relative error {err:.3g} >= {TOL:g}"


def test_softmax_without_the_max_shift_overflows_in_float32():
    # Logits above ~88.7 overflow exp() in float32: the naive softmax gives nan, the stable one the right loss.
    logits = np.array([[100.0, 0.0, -5.0], [1.0, 2.0, 3.0]], dtype=np.float32)
    labels = np.array([0, 2])
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        naive = nn.SoftmaxCrossEntropyLoss(stable=False)(logits, labels)
    stable = nn.SoftmaxCrossEntropyLoss()(logits, labels)
    assert np.isnan(naive), naive
    expected = (0.0 + np.log(np.exp(-2.0) + np.exp(-1.0) + 1.0)) / 2  # row 1: -log p = 0 (to float32 precision)
    assert abs(stable - expected) < 1e-5, (stable, expected)


@pytest.mark.parametrize("upstream", [1.0, 0.37])
@pytest.mark.parametrize(
    "target_kind", ["same-shape", "labels"],
)
def test_mse_gradcheck(rng, upstream, target_kind):
    output = rng.standard_normal((5, 4))
    if target_kind == "labels":  # integer class labels mean one-hot targets
        target = rng.integers(0, 4, size=5)
    else:
        target = rng.standard_normal((5, 4))
    err = loss_gradcheck(nn.MSELoss(), output, target, upstream)
    assert err < TOL, f"MSELoss ({target_kind}): relative error {err:.3g} >= {TOL:g}"


def test_mse_gradcheck_4d_output(rng):
    output = rng.standard_normal((2, 3, 4, 5))
    target = rng.standard_normal((2, 3, 4, 5))
    err = loss_gradcheck(nn.MSELoss(), output, target, 1.0)
    assert err < TOL, f"MSELoss on (2, 3, 4, 5): relative error {err:.3g} >= {TOL:g}"


# --- the checker itself catches wrong gradients ------------------------------------

class LinearWrongInputGrad(nn.Linear):
    """dx off by 10%: a typical scaling bug (e.g. a forgotten factor)."""

    def backward(self, dy):
        return 1.1 * super().backward(dy)


class LinearNoBiasGrad(nn.Linear):
    """Forgets the bias gradient."""

    def backward(self, dy):
        (x,) = self._saved_tensors()
        self.weight.grad += dy.T @ x
        return dy @ self.weight.data


class LinearWrongWeightGrad(nn.Linear):
    """Averages the weight gradient over the batch instead of summing it."""

    def backward(self, dy):
        dx = super().backward(dy)
        self.weight.grad /= dy.shape[0]
        return dx


@pytest.mark.parametrize(
    "layer_class, wrong",
    [(LinearWrongInputGrad, "x"), (LinearNoBiasGrad, "bias"), (LinearWrongWeightGrad, "weight")],
    ids=lambda v: v if isinstance(v, str) else v.__name__,
)
def test_checker_catches_wrong_gradient(rng, layer_class, wrong):
    layer = layer_class(5, 3, rng=rng, dtype=F64)
    randomize_bias(layer, rng)
    errors = check_layer(layer, rng.standard_normal((4, 5)), rng)
    assert errors[wrong] > 1e-2, f"{layer_class.__name__}: the checker missed a wrong {wrong!r} gradient: {errors}"
    right = {name: err for name, err in errors.items() if name != wrong}
    assert all(err < TOL for err in right.values()), f"the correct gradients should still pass: {right}"


class BatchNormStatisticsAsConstants(nn.BatchNorm1d):
    """The classic batch-norm bug: backpropagates as if the batch mean and variance were constants."""

    def backward(self, dy, input_grad=True):
        x_hat, scale, _ = self._saved_tensors()
        self.bias.grad += dy.sum(axis=0)
        self.weight.grad += (dy * x_hat).sum(axis=0)
        return dy * scale


def test_checker_catches_batchnorm_without_the_statistics_terms(rng):
    layer = BatchNormStatisticsAsConstants(3, dtype=F64)
    layer.weight.data[...] = rng.standard_normal(3)
    errors = check_layer(layer, rng.standard_normal((5, 3)), rng)
    assert errors["x"] > 1e-2, f"the checker missed dx without the mean and variance terms: {errors}"
    assert errors["weight"] < TOL and errors["bias"] < TOL, f"the parameter gradients are right: {errors}"


def test_numerical_gradient_of_known_function():
    """The finite-difference helper itself: d/da sum(a**3) = 3 a**2, and ``a`` is restored."""
    a = np.array([[0.5, -1.0, 2.0], [3.0, 0.0, -0.25]])
    before = a.copy()
    numeric = numerical_gradient(lambda: float(np.sum(a**3)), a)
    np.testing.assert_allclose(numeric, 3 * before**2, rtol=1e-8, atol=1e-8, err_msg="numeric / exact")
    np.testing.assert_array_equal(a, before, err_msg="numerical_gradient must restore the array it perturbs")
