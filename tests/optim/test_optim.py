"""SGD and Adam: the update rules by hand, step for step against torch.optim,
hyperparameter validation, zero_grad, and state_dict round trips."""

import copy
import math

import numpy as np
import pytest

from conftest import randomize_output_layer

from npconv import models, nn
from npconv.nn import Parameter
from npconv.optim import SGD, Adam

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
SHAPES = [(3, 4), (5,), (2, 1, 3, 3)]


def make_params(rng, dtype):
    return [Parameter(rng.standard_normal(shape).astype(dtype)) for shape in SHAPES]


def gradient_sequence(rng, steps, dtype):
    """Random gradients for every parameter at every step (shared by npconv and torch)."""
    return [[rng.standard_normal(shape).astype(dtype) for shape in SHAPES] for _ in range(steps)]


def run(optimizer, params, grads):
    for step_grads in grads:
        optimizer.zero_grad()
        for p, g in zip(params, step_grads):
            p.grad += g
        optimizer.step()


# --- the rules by hand, no torch ---------------------------------------------------------

def test_sgd_plain_rule_by_hand():
    p = Parameter(np.array([1.0, -2.0]))
    opt = SGD([p], lr=0.1, weight_decay=0.5)
    p.grad[...] = [0.2, 0.4]
    opt.step()
    # theta - lr * (g + wd * theta) = [1 - 0.1 * (0.2 + 0.5), -2 - 0.1 * (0.4 - 1.0)]
    np.testing.assert_allclose(p.data, [0.93, -1.94], rtol=1e-15, err_msg="npconv / by hand")


def test_sgd_momentum_rule_by_hand():
    p = Parameter(np.array([1.0]))
    opt = SGD([p], lr=0.1, momentum=0.9)
    expected_theta, buf = 1.0, 0.0
    for g in [1.0, 0.5, -2.0]:
        p.grad[...] = g
        opt.step()
        buf = 0.9 * buf + g  # b_t = mu * b_{t-1} + g, b_0 = 0
        expected_theta -= 0.1 * buf
        assert abs(p.data[0] - expected_theta) < 1e-15, f"npconv {p.data[0]} / by hand {expected_theta}"
    # theta_3 = 1 - 0.1 * (1 + 1.4 + (-0.74)) = 0.834
    assert abs(p.data[0] - 0.834) < 1e-12, p.data[0]


def test_adam_rule_by_hand():
    lr, (b1, b2), eps, wd = 0.01, (0.8, 0.9), 1e-8, 0.1
    p = Parameter(np.array([0.5, -1.5]))
    opt = Adam([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    theta, m, v = p.data.copy(), np.zeros(2), np.zeros(2)
    for t, g in enumerate([np.array([0.3, -0.2]), np.array([-0.1, 0.4]), np.array([1.0, 1.0])], start=1):
        p.grad[...] = g
        opt.step()
        g = g + wd * theta
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        theta = theta - lr * m_hat / (np.sqrt(v_hat) + eps)
        np.testing.assert_allclose(p.data, theta, rtol=1e-13, err_msg=f"step {t}: npconv / by hand")


def test_adam_first_step_moves_each_weight_by_about_lr():
    """Bias correction: on step 1 m_hat / sqrt(v_hat) = g / |g|, so every weight moves by lr (minus eps)."""
    p = Parameter(np.array([1.0, 1.0, 1.0]))
    opt = Adam([p], lr=0.05)
    p.grad[...] = [3.0, -0.001, 100.0]
    opt.step()
    np.testing.assert_allclose(p.data, [0.95, 1.05, 0.95], rtol=1e-6, err_msg="npconv / theta - lr * sign(g)")


@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-2),
                                  lambda ps: Adam(ps, lr=1e-2, weight_decay=1e-2)], ids=["SGD", "Adam"])
def test_step_keeps_float32_parameters_float32(rng, make):
    params = make_params(rng, F32)
    opt = make(params)
    run(opt, params, gradient_sequence(rng, 3, F32))
    assert all(p.data.dtype == F32 and p.grad.dtype == F32 for p in params), [p.data.dtype for p in params]


def test_optimizer_updates_in_place(rng):
    """Models hold their Parameter objects: the optimizer must change .data in place, not rebind it."""
    params = make_params(rng, F64)
    arrays = [p.data for p in params]
    run(Adam(params, lr=0.1), params, gradient_sequence(rng, 2, F64))
    assert all(p.data is a for p, a in zip(params, arrays)), "step() replaced a parameter array"


# --- zero_grad ----------------------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.1, momentum=0.5), lambda ps: Adam(ps)], ids=["SGD", "Adam"])
def test_zero_grad_zeroes_every_gradient(rng, make):
    model = models.mlp(rng=rng)
    randomize_output_layer(model, rng)
    opt = make(model.parameters())
    loss_fn = nn.SoftmaxCrossEntropyLoss()
    loss_fn(model(rng.standard_normal((4, 1, 28, 28))), rng.integers(0, 10, size=4))
    model.backward(loss_fn.backward())
    assert all(np.any(p.grad != 0) for p in model.parameters()), "backward should have filled every gradient"
    opt.zero_grad()
    nonzero = [name for name, p in model.named_parameters() if np.any(p.grad != 0)]
    assert not nonzero, f"gradients not zeroed: {nonzero}"


def test_step_with_zero_gradient_and_no_decay_changes_nothing(rng):
    params = make_params(rng, F64)
    before = [p.data.copy() for p in params]
    for opt in (SGD(params, lr=0.1, momentum=0.9), Adam(params, lr=0.1)):
        opt.zero_grad()
        opt.step()
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p.data, b, err_msg="a zero gradient must not move the weights")


# --- hyperparameter validation ------------------------------------------------------------------

# (keyword arguments, the name the error message must mention)
BAD_SGD = [(dict(lr=0.0), "lr"), (dict(lr=-0.1), "lr"), (dict(lr=math.inf), "lr"), (dict(lr=math.nan), "lr"),
           (dict(lr=0.1, momentum=1.0), "momentum"), (dict(lr=0.1, momentum=-0.1), "momentum"),
           (dict(lr=0.1, momentum=math.nan), "momentum"),
           (dict(lr=0.1, weight_decay=-1e-4), "weight_decay"), (dict(lr=0.1, weight_decay=math.nan), "weight_decay")]
BAD_ADAM = [(dict(lr=0.0), "lr"), (dict(lr=-1e-3), "lr"), (dict(lr=math.inf), "lr"), (dict(lr=math.nan), "lr"),
            (dict(betas=(1.0, 0.999)), r"betas\[0\]"), (dict(betas=(0.9, 1.0)), r"betas\[1\]"),
            (dict(betas=(-0.1, 0.999)), r"betas\[0\]"), (dict(eps=-1e-8), "eps"),
            (dict(weight_decay=-1e-4), "weight_decay")]


@pytest.mark.parametrize("kwargs, name", BAD_SGD, ids=str)
def test_sgd_rejects_invalid_hyperparameters(rng, kwargs, name):
    with pytest.raises(ValueError, match=name):
        SGD(make_params(rng, F64), **kwargs)


@pytest.mark.parametrize("kwargs, name", BAD_ADAM, ids=str)
def test_adam_rejects_invalid_hyperparameters(rng, kwargs, name):
    with pytest.raises(ValueError, match=name):
        Adam(make_params(rng, F64), **kwargs)


@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.1), lambda ps: Adam(ps)], ids=["SGD", "Adam"])
def test_empty_parameter_list_is_an_error(make):
    with pytest.raises(ValueError, match="empty"):
        make([])


def _two_steps(optimizer, grads):
    """Run two steps with the given gradients; the parameters' values before, after one and after two steps."""
    values = [[p.data.copy() for p in optimizer.params]]
    for step in grads:
        for p, g in zip(optimizer.params, step):
            p.grad = g.copy()
        optimizer.step()
        values.append([p.data.copy() for p in optimizer.params])
    return values


def test_boundary_hyperparameters_are_accepted_and_follow_the_update_rule(rng):
    grads = gradient_sequence(rng, 2, F64)
    # The smallest learning rate still moves every parameter by -lr * g.
    p0, p1, p2 = _two_steps(SGD(make_params(rng, F64), lr=1e-12, momentum=0.0, weight_decay=0.0), grads)
    for a, b, c, g1, g2 in zip(p0, p1, p2, *grads):
        np.testing.assert_allclose(b, a - 1e-12 * g1, rtol=1e-15, atol=0)
        np.testing.assert_allclose(c, b - 1e-12 * g2, rtol=1e-15, atol=0)
        assert not np.array_equal(c, a), "a learning rate of 1e-12 must still change the weights"
    # Momentum just below 1 keeps almost all of the last step: v2 = 0.999 * g1 + g2.
    p0, p1, p2 = _two_steps(SGD(make_params(rng, F64), lr=10.0, momentum=0.999), grads)
    for a, b, c, g1, g2 in zip(p0, p1, p2, *grads):
        np.testing.assert_allclose(b, a - 10.0 * g1, rtol=1e-14, atol=1e-14)
        np.testing.assert_allclose(c, b - 10.0 * (0.999 * g1 + g2), rtol=1e-14, atol=1e-13)
    # Adam with betas (0, 0) and eps 0: m = g, sqrt(v) = |g|, so each step moves every weight by lr * sign(g).
    p0, p1, p2 = _two_steps(Adam(make_params(rng, F64), lr=1.0, betas=(0.0, 0.0), eps=0.0, weight_decay=0.0), grads)
    for a, b, c, g1, g2 in zip(p0, p1, p2, *grads):
        np.testing.assert_allclose(b, a - np.sign(g1), rtol=1e-14, atol=1e-14)
        np.testing.assert_allclose(c, b - np.sign(g2), rtol=1e-14, atol=1e-14)


# --- against torch.optim ------------------------------------------------------------------

SGD_CONFIGS = [dict(lr=0.1), dict(lr=0.05, momentum=0.9), dict(lr=0.1, weight_decay=5e-3),
               dict(lr=0.05, momentum=0.9, weight_decay=5e-3)]
ADAM_CONFIGS = [dict(lr=1e-2), dict(lr=1e-2, weight_decay=5e-3), dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6),
                dict(lr=1e-2, betas=(0.5, 0.9), weight_decay=1e-2)]
# float64: identical up to the order of a few floating-point operations. float32: rounding
# compounds over 20 steps; 1e-6 relative (~8 ulps) with a small floor for entries near zero.
TORCH_TOL = {F64: dict(rtol=1e-12, atol=1e-14), F32: dict(rtol=1e-6, atol=1e-6)}


def compare_with_torch(torch, ours_class, theirs_class, kwargs, dtype, rng, steps=20):
    params = make_params(rng, dtype)
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    ours = ours_class(params, **kwargs)
    theirs = theirs_class(tparams, **kwargs)
    for step, step_grads in enumerate(gradient_sequence(rng, steps, dtype), start=1):
        ours.zero_grad()
        theirs.zero_grad()
        for p, tp, g in zip(params, tparams, step_grads):
            p.grad += g
            tp.grad = torch.from_numpy(g.copy())
        ours.step()
        theirs.step()
        for i, (p, tp) in enumerate(zip(params, tparams)):
            np.testing.assert_allclose(
                p.data, tp.detach().numpy(), **TORCH_TOL[dtype],
                err_msg=f"{ours_class.__name__}({kwargs}) {dtype} step {step} parameter {i}: npconv / torch",
            )


@pytest.mark.parametrize("kwargs", SGD_CONFIGS, ids=str)
@pytest.mark.parametrize("dtype", [F64, F32], ids=str)
def test_sgd_matches_torch(torch, rng, kwargs, dtype):
    compare_with_torch(torch, SGD, torch.optim.SGD, kwargs, dtype, rng)


@pytest.mark.parametrize("kwargs", ADAM_CONFIGS, ids=str)
@pytest.mark.parametrize("dtype", [F64, F32], ids=str)
def test_adam_matches_torch(torch, rng, kwargs, dtype):
    compare_with_torch(torch, Adam, torch.optim.Adam, kwargs, dtype, rng)


# --- state_dict round trip ------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda ps: SGD(ps, lr=0.05),
    lambda ps: SGD(ps, lr=0.05, momentum=0.9, weight_decay=5e-3),
    lambda ps: Adam(ps, lr=1e-2, betas=(0.8, 0.99), weight_decay=1e-3),
], ids=["SGD", "SGD-momentum", "Adam"])
def test_state_dict_round_trip_continues_identically(rng, make):
    """Train 5 steps, checkpoint weights + optimizer state, restore into a fresh optimizer,
    train 5 more: bit-for-bit what the uninterrupted optimizer does."""
    grads = gradient_sequence(rng, 10, F64)
    params = make_params(rng, F64)
    original = make(params)
    run(original, params, grads[:5])

    # A checkpoint is a snapshot: copy it, as one would when writing it to disk.
    saved_state = copy.deepcopy(original.state_dict())
    saved_params = [p.data.copy() for p in params]
    assert int(saved_state["step_count"]) == 5, saved_state["step_count"]

    restored_params = [Parameter(a.copy()) for a in saved_params]
    restored = make(restored_params)
    restored.load_state_dict(saved_state)
    assert restored.step_count == 5

    run(original, params, grads[5:])
    run(restored, restored_params, grads[5:])
    for i, (p, q) in enumerate(zip(params, restored_params)):
        np.testing.assert_array_equal(q.data, p.data, err_msg=f"parameter {i}: restored / uninterrupted")


def test_load_state_dict_rejects_wrong_shapes(rng):
    params = make_params(rng, F64)
    opt = Adam(params)
    state = {k: np.asarray(v).copy() for k, v in opt.state_dict().items()}
    state["exp_avg.0"] = np.zeros((4, 3))
    with pytest.raises(ValueError, match="exp_avg.0"):
        Adam(make_params(rng, F64)).load_state_dict(state)


def test_fresh_state_dict_without_restore_differs(rng):
    """Control for the round-trip test: a fresh Adam (step 0, zero moments) does NOT continue identically."""
    grads = gradient_sequence(rng, 6, F64)
    params = make_params(rng, F64)
    original = Adam(params, lr=1e-2)
    run(original, params, grads[:3])
    fresh_params = [Parameter(p.data.copy()) for p in params]
    fresh = Adam(fresh_params, lr=1e-2)
    run(original, params, grads[3:])
    run(fresh, fresh_params, grads[3:])
    assert not np.array_equal(params[0].data, fresh_params[0].data), "optimizer state had no effect"
