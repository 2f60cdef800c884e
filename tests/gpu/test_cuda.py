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

from devicecases import LAYERS, layer_on, three_steps
from npconv import backend
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


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_every_layer_on_the_gpu(rng, name, dtype):
    x = rng.standard_normal(LAYERS[name][1]).astype(dtype)
    y, dx, grads, dy = layer_on("cpu", name, dtype, x, rng)
    yd, dxd, gradsd, _ = layer_on("cuda", name, dtype, x, rng, dy)
    close(yd, y, f"{name} forward")
    close(dxd, dx, f"{name} backward")
    for n in grads:
        close(gradsd[n], grads[n], f"{name} {n}.grad")


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_training_steps_on_the_gpu(rng, opt, dtype):
    x = rng.standard_normal((16, 1, 28, 28))
    labels = rng.integers(0, 10, size=16)
    host, host_losses = three_steps("cpu", opt, x, labels, dtype)
    device, device_losses = three_steps("cuda", opt, x, labels, dtype)
    for n in host:
        close(device[n], host[n], n)
    np.testing.assert_allclose([float(v) for v in device_losses], host_losses, rtol=1e-4)


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
