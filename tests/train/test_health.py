"""Training health: the per-layer figures are right, measuring them changes nothing, the advice fires when it should."""

import csv
import math

import numpy as np
import pytest

from npconv import nn
from npconv.data import DataLoader
from npconv.train.health import HEALTH_COLUMNS, HealthMonitor, advise
from npconv.optim import SGD
from npconv.train import TrainConfig, run_training
from npconv.train.loop import train_epoch


def _row(layer, type_, **figures):
    row = dict.fromkeys(HEALTH_COLUMNS)
    row.update(epoch=1, layer=layer, type=type_, **figures)
    return row


def test_dead_relu_fraction_counts_units_zero_for_every_image(rng):
    linear = nn.Linear(3, 4, rng=rng, dtype=np.float64)
    linear.weight.data[...] = 0
    linear.bias.data[...] = [-1.0, 1.0, 0.0, 0.0]  # unit 0 always negative, unit 1 always positive
    linear.weight.data[2, 0] = 1.0                 # unit 2 positive only when x0 > 0; unit 3 always exactly 0
    model = nn.Sequential(linear, nn.ReLU())
    x = np.array([[1.0, 0, 0], [-1.0, 0, 0]])
    rows = HealthMonitor(model, x).measure(epoch=1)
    assert [r["type"] for r in rows] == ["Linear", "ReLU"]
    assert rows[1]["dead_fraction"] == 0.5, rows[1]  # units 0 and 3 dead, 1 and 2 alive
    assert rows[0]["dead_fraction"] is None and rows[0]["grad_norm"] is None  # no step measured yet


@pytest.mark.parametrize("activation, scale, expected", [(nn.Sigmoid, 100.0, 1.0), (nn.Tanh, 100.0, 1.0),
                                                          (nn.Sigmoid, 1e-3, 0.0), (nn.Tanh, 1e-3, 0.0)])
def test_saturated_fraction(rng, activation, scale, expected):
    linear = nn.Linear(5, 6, rng=rng, dtype=np.float64)
    linear.weight.data *= scale
    model = nn.Sequential(linear, activation())
    rows = HealthMonitor(model, rng.standard_normal((50, 5))).measure(epoch=1)
    assert rows[1]["saturated_fraction"] == pytest.approx(expected, abs=0.1)


def test_gradient_norm_and_update_ratio_of_one_sgd_step(rng):
    model = nn.Sequential(nn.Linear(4, 3, rng=rng, dtype=np.float64), nn.ReLU())
    optimizer = SGD(model.parameters(), lr=0.1)
    layer = model[0]
    layer.weight.grad[...] = rng.standard_normal((3, 4))
    layer.bias.grad[...] = rng.standard_normal(3)
    weight_before = layer.weight.data.copy()
    monitor = HealthMonitor(model, rng.standard_normal((8, 4)))
    monitor.before_update()
    optimizer.step()
    monitor.after_update()
    row = monitor.measure(epoch=3)[0]
    expected_grad_norm = math.sqrt(np.sum(layer.weight.grad**2) + np.sum(layer.bias.grad**2))
    assert row["epoch"] == 3 and row["grad_norm"] == pytest.approx(expected_grad_norm)
    # Plain SGD: the update is lr * g, so the ratio is lr * |g_W| / |W|.
    expected_ratio = 0.1 * np.linalg.norm(layer.weight.grad) / np.linalg.norm(weight_before)
    assert row["update_ratio"] == pytest.approx(expected_ratio)


def test_measuring_changes_nothing(rng):
    """The same epoch with and without a monitor gives bit-identical weights (no randomness drawn, no state kept)."""
    x = rng.standard_normal((60, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 60)
    weights = []
    for with_monitor in (False, True):
        model = nn.Sequential(nn.Flatten(), nn.Dropout(0.3, rng=np.random.default_rng(1)),
                              nn.Linear(784, 16, rng=np.random.default_rng(2)), nn.ReLU(),
                              nn.Linear(16, 10, rng=np.random.default_rng(3)))
        optimizer = SGD(model.parameters(), lr=0.1, momentum=0.9)
        loader = DataLoader(x, y, 16, shuffle=True, rng=np.random.default_rng(4))
        monitor = HealthMonitor(model, x[:20]) if with_monitor else None
        for epoch in (1, 2):
            train_epoch(model, nn.SoftmaxCrossEntropyLoss(), optimizer, loader, progress=False, monitor=monitor)
            if monitor:
                monitor.measure(epoch)
        weights.append([p.data.copy() for p in model.parameters()])
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)


def test_healthy_figures_give_no_advice():
    rows = [_row(0, "Linear", grad_norm=1.0, update_ratio=2e-3), _row(1, "ReLU", dead_fraction=0.1),
            _row(2, "Linear", grad_norm=1.0, update_ratio=0.5)]  # the output layer may move fast
    assert advise(rows, train_loss=0.3, train_acc=0.9, num_classes=10) == []


@pytest.mark.parametrize(
    "rows, loss, acc, key, words",
    [
        ([_row(0, "Linear", update_ratio=0.1), _row(1, "Linear", update_ratio=1e-3)], 1.0, 0.5,
         "lr-too-high", "lr or weight decay too high"),
        ([_row(1, "ReLU", dead_fraction=0.9)], 1.0, 0.5, "dead-relu", "90% of the ReLUs of layer 1 are dead"),
        ([_row(1, "Sigmoid", saturated_fraction=0.8)], 1.0, 0.5, "saturated", "80% of the Sigmoid outputs"),
        ([], math.log(10) + 0.001, 0.1, "loss-at-chance", "stuck at ln 10"),
    ],
)
def test_each_unhealthy_figure_gives_its_advice(rows, loss, acc, key, words):
    advice = advise(rows, train_loss=loss, train_acc=acc, num_classes=10)
    assert [k for k, _ in advice] == [key]
    assert words in advice[0][1], advice


def test_slow_learning_is_not_called_stuck():
    # Near ln 10 but clearly above chance accuracy: learning, just slowly.
    assert advise([], train_loss=2.29, train_acc=0.3, num_classes=10) == []


def _train_and_capture(tmp_path, name, **settings):
    lines = []
    config = TrainConfig(model="mlp", train_subset=500, batch_size=50, epochs=1, **settings)
    summary = run_training(config, tmp_path / name, progress=False, log=lines.append)
    with open(tmp_path / name / "health.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [line for line in lines if line.startswith("advice: ")], summary, rows


def test_health_csv_and_advice_of_real_runs(tmp_path):
    advice, summary, rows = _train_and_capture(tmp_path, "default")
    assert advice == [] and summary.advice == [], "the defaults must train without advice"
    assert list(rows[0]) == HEALTH_COLUMNS
    assert [(r["layer"], r["type"]) for r in rows] == [("0", "Flatten"), ("1", "Linear"), ("2", "ReLU"),
                                                       ("3", "Linear")]
    assert float(rows[1]["grad_norm"]) > 0 and 0 < float(rows[1]["update_ratio"]) < 0.02
    assert 0 <= float(rows[2]["dead_fraction"]) < 0.5 and rows[2]["grad_norm"] == ""

    # The study's weight decay 0.5: the decay alone rewrites the weights every step.
    advice, summary, _ = _train_and_capture(tmp_path, "decay", weight_decay=0.5)
    assert len(advice) == 1 and "update/weight ratio" in advice[0], advice
    assert summary.advice == [advice[0][len("advice: "):]]

    # Learning rate 1: most ReLUs die in the first epoch.
    advice, _, _ = _train_and_capture(tmp_path, "lr", lr=1.0)
    assert any("of the ReLUs of layer 2 are dead" in line for line in advice), advice
