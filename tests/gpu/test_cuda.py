"""The GPU backend against the NumPy backend, on a real CUDA device through CuPy.

These tests skip where CuPy or a CUDA device is missing (as on CI, and on the
machines this suite is usually run on); run them on a GPU machine with
``pytest -m gpu``. The CPU suite checks the same seam with a stand-in for CuPy
(``tests/test_backend.py``). cuBLAS sums in another order than OpenBLAS, so
results agree up to rounding, with tolerances scaled to the values' magnitude.
"""

import subprocess
import sys

import numpy as np
import pytest

from npconv import backend, models, nn, optim
from npconv.errors import SettingError


def _cuda():
    try:
        with backend.on_device("cuda"):
            return True
    except SettingError:
        return False


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _cuda(), reason="no CuPy or no CUDA device here")]
TOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-12}


def close(device_value, host_value, what):
    host_value = np.asarray(host_value)
    scale = max(float(np.max(np.abs(host_value))), 1e-30)
    np.testing.assert_allclose(backend.to_numpy(device_value), host_value, rtol=0,
                               atol=TOL[host_value.dtype] * scale * 10, err_msg=what)


LAYERS = {
    "Linear": (lambda dt: nn.Linear(12, 5, rng=np.random.default_rng(0), dtype=dt), (4, 12)),
    "Conv2d": (lambda dt: nn.Conv2d(2, 3, 3, padding=1, rng=np.random.default_rng(0), dtype=dt), (5, 2, 6, 6)),
    "Conv2d-stride": (lambda dt: nn.Conv2d(2, 3, 3, stride=2, rng=np.random.default_rng(0), dtype=dt), (5, 2, 7, 7)),
    "MaxPool2d": (lambda dt: nn.MaxPool2d(2), (5, 2, 6, 6)),
    "AvgPool2d": (lambda dt: nn.AvgPool2d(2, padding=1), (5, 2, 6, 6)),
    "BatchNorm2d": (lambda dt: nn.BatchNorm2d(2, dtype=dt), (5, 2, 6, 6)),
    "BatchNorm1d": (lambda dt: nn.BatchNorm1d(7, dtype=dt), (5, 7)),
    "ReLU": (lambda dt: nn.ReLU(), (5, 2, 6, 6)),
    "Sigmoid": (lambda dt: nn.Sigmoid(), (5, 7)),
    "Tanh": (lambda dt: nn.Tanh(), (5, 7)),
    "Flatten": (lambda dt: nn.Flatten(), (5, 2, 3, 3)),
    "Dropout": (lambda dt: nn.Dropout(0.3, rng=np.random.default_rng(3)), (5, 40)),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_every_layer_on_the_gpu(rng, name, dtype):
    factory, shape = LAYERS[name]
    x = rng.standard_normal(shape).astype(dtype)
    results, dy = [], None
    for device in ("cpu", "cuda"):
        with backend.on_device(device):
            layer = factory(dtype)
            y = layer(backend.to_device(x))
            if dy is None:
                dy = rng.standard_normal(y.shape).astype(dtype)
            dx = layer.backward(backend.to_device(dy))
            results.append((y, dx, {n: p.grad for n, p in layer.named_parameters()}))
    (y, dx, grads), (yd, dxd, gradsd) = results
    close(yd, y, f"{name} forward")
    close(dxd, dx, f"{name} backward")
    for n in grads:
        close(gradsd[n], grads[n], f"{name} {n}.grad")


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_training_steps_on_the_gpu(rng, opt, dtype):
    x = rng.standard_normal((16, 1, 28, 28)).astype(dtype)
    labels = rng.integers(0, 10, size=16)
    weights, losses = [], []
    for device in ("cpu", "cuda"):
        with backend.on_device(device):
            model = models.cnn(dropout=0.2, rng=np.random.default_rng(1), dtype=dtype)
            for layer in model:
                if isinstance(layer, nn.Dropout):
                    layer.rng = np.random.default_rng(4)
            params = model.parameters()
            step = (optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4) if opt == "sgd"
                    else optim.Adam(params, lr=1e-3, weight_decay=5e-4))
            loss_fn = nn.SoftmaxCrossEntropyLoss()
            xd, yd = backend.to_device(x), backend.to_device(labels)
            for _ in range(3):
                step.zero_grad()
                losses.append(float(loss_fn(model(xd), yd)))
                model.backward(loss_fn.backward(), input_grad=False)
                step.step()
            weights.append({n: backend.to_numpy(p.data) for n, p in model.named_parameters()})
    for n in weights[0]:
        close(weights[1][n], weights[0][n], n)
    np.testing.assert_allclose(losses[3:], losses[:3], rtol=1e-4)


def test_a_model_trained_on_the_gpu_evaluates_on_the_cpu(tmp_path):
    from npconv.train import TrainConfig, run_training
    from npconv.train.modelfile import load_model

    quiet = dict(progress=False, log=lambda *a: None)
    summary = run_training(TrainConfig(model="cnn", epochs=1, train_subset=2000, device="cuda"), tmp_path / "run",
                           **quiet)
    assert summary.status == "completed" and summary.test_acc > 0.8
    model, config = load_model(tmp_path / "run" / "model.npz")  # on the CPU: files hold host arrays
    assert isinstance(model[0].weight.data, np.ndarray)


def test_npconv_train_on_the_gpu(tmp_path):
    result = subprocess.run([sys.executable, "-m", "npconv", "train", "--device", "cuda", "--epochs", "1",
                             "--quiet", "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.split("final test accuracy ")[1].split("%")[0]) > 97.0
