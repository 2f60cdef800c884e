"""BatchNorm1d and BatchNorm2d: against the loop reference, running statistics, modes, layouts, buffers, errors.

Gradient checks are in test_gradcheck.py, the comparison with PyTorch in test_torch.py.
"""

import numpy as np
import pytest

from conftest import LAYOUTS, in_layout

from npconv import nn, optim
from npconv.nn import reference

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
SHAPES = {"BatchNorm1d (N, C)": (nn.BatchNorm1d, (6, 3)), "BatchNorm1d (N, C, L)": (nn.BatchNorm1d, (4, 3, 5)),
          "BatchNorm2d": (nn.BatchNorm2d, (3, 3, 5, 4))}


def assert_close(mine, ref, what, rtol=1e-12, atol=1e-12):
    np.testing.assert_allclose(mine, ref, rtol=rtol, atol=atol, err_msg=f"{what}: npconv / reference")


def random_bn(cls, c, rng, dtype=F64, **kwargs):
    layer = cls(c, dtype=dtype, **kwargs)
    layer.weight.data[...] = rng.standard_normal(c)
    layer.bias.data[...] = rng.standard_normal(c)
    return layer


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_training_mode_matches_the_loop_reference(rng, name):
    cls, shape = SHAPES[name]
    layer = random_bn(cls, shape[1], rng)
    x = 3 * rng.standard_normal(shape) + 2
    y = layer(x)
    y_ref, mean, var = reference.batchnorm_forward(x, layer.weight.data, layer.bias.data)
    assert_close(y, y_ref, f"{name} forward")
    dy = rng.standard_normal(shape)
    dx = layer.backward(dy)
    dx_ref, dgamma_ref, dbeta_ref = reference.batchnorm_backward(dy, x, layer.weight.data)
    assert_close(dx, dx_ref, f"{name} dx")
    assert_close(layer.weight.grad, dgamma_ref, f"{name} dgamma")
    assert_close(layer.bias.grad, dbeta_ref, f"{name} dbeta")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dy_layout", LAYOUTS)
def test_batchnorm2d_results_do_not_depend_on_the_memory_layout(rng, layout, dy_layout):
    x, dy = rng.standard_normal((4, 3, 5, 6)), rng.standard_normal((4, 3, 5, 6))
    plain = random_bn(nn.BatchNorm2d, 3, rng)
    laid_out = random_bn(nn.BatchNorm2d, 3, np.random.default_rng(0))
    laid_out.load_state_dict({k: v.copy() for k, v in plain.state_dict().items()})
    y, dx = plain(x), plain.backward(dy)
    y_laid, dx_laid = laid_out(in_layout(x, layout)), laid_out.backward(in_layout(dy, dy_layout))
    assert_close(y_laid, y, f"{layout} forward", rtol=1e-14, atol=1e-14)
    assert_close(dx_laid, dx, f"{layout} x / {dy_layout} dy: dx", rtol=1e-14, atol=1e-14)
    if layout == "batch-last":  # a Conv2d's output stays batch-last through the layer (no copy for the next conv)
        assert y_laid.transpose(1, 2, 3, 0).flags.c_contiguous, "a batch-last input gives a batch-last output"


def expected_running_stats(batches, momentum):
    """Running mean and variance after ``batches`` (each (N, C)), by PyTorch's rule, unbiased variance."""
    mean, var = np.zeros(batches[0].shape[1]), np.ones(batches[0].shape[1])
    for t, b in enumerate(batches, start=1):
        factor = 1 / t if momentum is None else momentum
        mean = (1 - factor) * mean + factor * b.mean(axis=0)
        var = (1 - factor) * var + factor * b.var(axis=0, ddof=1)
    return mean, var


@pytest.mark.parametrize("momentum", [0.1, 0.5, None], ids=str)
def test_running_statistics_follow_the_batches_with_unbiased_variance(rng, momentum):
    layer = nn.BatchNorm1d(4, momentum=momentum, dtype=F64)
    batches = [rng.standard_normal((8, 4)) * [1, 2, 3, 4] + [0, 1, -1, 5] for _ in range(5)]
    for b in batches:
        layer(b)
    mean, var = expected_running_stats(batches, momentum)
    assert_close(layer.running_mean.data, mean, "running_mean")
    assert_close(layer.running_var.data, var, "running_var")
    assert int(layer.num_batches_tracked.data) == 5
    assert layer.num_batches_tracked.data.dtype == np.int64 and layer.num_batches_tracked.data.shape == ()


def test_evaluation_mode_uses_the_running_statistics_and_leaves_them_alone(rng):
    layer = random_bn(nn.BatchNorm2d, 3, rng)
    for _ in range(3):
        layer(rng.standard_normal((5, 3, 4, 4)) * 2 + 1)
    before = {k: v.copy() for k, v in layer.state_dict().items()}
    layer.eval()
    x = rng.standard_normal((2, 3, 4, 4))
    y = layer(x)
    rm, rv = layer.running_mean.data[:, None, None], layer.running_var.data[:, None, None]
    expected = layer.weight.data[:, None, None] * (x - rm) / np.sqrt(rv + layer.eps) + layer.bias.data[:, None, None]
    assert_close(y, expected, "eval forward")
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    assert_close(dx, dy * layer.weight.data[:, None, None] / np.sqrt(rv + layer.eps), "eval dx")
    with nn.no_grad():  # inference computes x * scale + shift: the same up to rounding
        assert_close(layer(x), y, "eval forward under no_grad", rtol=1e-14, atol=1e-14)
    for name, value in layer.state_dict().items():
        np.testing.assert_array_equal(value, before[name], err_msg=f"{name} changed in eval mode")


def test_a_batch_of_one_is_refused_in_training_mode_only(rng):
    layer = nn.BatchNorm1d(3)
    with pytest.raises(ValueError, match="more than one value per channel"):
        layer(rng.standard_normal((1, 3)))
    layer.eval()
    assert layer(rng.standard_normal((1, 3))).shape == (1, 3)


@pytest.mark.parametrize("cls, shape", [(nn.BatchNorm1d, (4, 5)), (nn.BatchNorm1d, (4, 3, 2, 2)),
                                        (nn.BatchNorm2d, (4, 5, 2, 2)), (nn.BatchNorm2d, (4, 3))], ids=str)
def test_wrong_input_shapes_are_clear_errors(rng, cls, shape):
    with pytest.raises(ValueError, match=rf"{cls.__name__}\(3\) expects input"):
        cls(3)(rng.standard_normal(shape))


@pytest.mark.parametrize("kwargs, match", [({"eps": 0}, "eps"), ({"momentum": 1.5}, "momentum"),
                                           ({"momentum": -0.1}, "momentum")], ids=str)
def test_bad_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nn.BatchNorm2d(3, **kwargs)


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_buffers_have_pytorch_names_and_are_not_parameters(dtype):
    model = nn.Sequential(nn.Conv2d(1, 4, 3, rng=np.random.default_rng(0), dtype=dtype),
                          nn.BatchNorm2d(4, dtype=dtype), nn.ReLU())
    assert list(model.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                                        "1.running_var", "1.num_batches_tracked"]
    assert [name for name, _ in model.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert [name for name, _ in model.named_buffers()] == ["1.running_mean", "1.running_var",
                                                           "1.num_batches_tracked"]
    assert {b.dtype for b in model.buffers()} == {dtype, np.dtype(np.int64)}


def test_the_optimizer_never_touches_the_buffers(rng):
    """Weight decay and momentum act on parameters only; the running statistics change only in forward."""
    layer = random_bn(nn.BatchNorm1d, 3, rng)
    opt = optim.SGD(layer.parameters(), lr=0.1, momentum=0.9, weight_decay=0.5)
    layer(rng.standard_normal((6, 3)))
    layer.backward(rng.standard_normal((6, 3)))
    buffers = {name: b.data.copy() for name, b in layer.named_buffers()}
    weight = layer.weight.data.copy()
    opt.step()
    opt.step()
    assert not np.array_equal(layer.weight.data, weight), "the step must change the weight"
    for name, b in layer.named_buffers():
        np.testing.assert_array_equal(b.data, buffers[name], err_msg=f"{name} changed in optimizer.step()")


def test_affine_false_has_no_parameters(rng):
    layer = nn.BatchNorm1d(3, affine=False, dtype=F64)
    x = rng.standard_normal((5, 3))
    y_ref, _, _ = reference.batchnorm_forward(x, np.ones(3), np.zeros(3))
    assert_close(layer(x), y_ref, "affine=False forward")
    assert layer.parameters() == [] and len(layer.buffers()) == 3


@pytest.mark.parametrize("name, value, match", [
    ("running_var", -1.0, "running_var must hold finite values >= 0"),
    ("running_var", np.nan, "running_var must hold finite values >= 0"),
    ("running_mean", np.inf, "running_mean holds a value that is not finite"),
    ("num_batches_tracked", -3, "num_batches_tracked must be >= 0"),
])
def test_loading_impossible_running_statistics_is_refused(name, value, match):
    model = nn.Sequential(nn.BatchNorm1d(3))
    state = {k: v.copy() for k, v in model.state_dict().items()}
    state[f"0.{name}"][...] = value
    with pytest.raises(ValueError, match=rf"^0\.{match}"):
        model.load_state_dict(state)


@pytest.mark.parametrize("name, bad", [("1.running_mean", np.zeros(5, np.float32)),
                                       ("1.running_var", np.ones(4, np.float64)),
                                       ("1.num_batches_tracked", np.zeros((), np.float32)),
                                       ("1.num_batches_tracked", np.zeros(1, np.int64))], ids=str)
def test_loading_buffers_of_the_wrong_shape_or_dtype_is_refused(name, bad):
    model = nn.Sequential(nn.Linear(2, 4, rng=np.random.default_rng(0)), nn.BatchNorm1d(4))
    state = {**model.state_dict(), name: bad}
    with pytest.raises(ValueError, match=rf"^{name}: (shape|dtype)"):
        model.load_state_dict(state)
