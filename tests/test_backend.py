"""The array backend: choosing it, its errors, and the seam -- every layer, loss and optimizer runs on a device
backend with the same numbers, and nothing leaves the device without being asked.

The GPU backend is exercised with :mod:`fakecupy` (CuPy's rules on NumPy's numbers, see its docstring);
``tests/gpu/`` runs the same checks against real CuPy where a CUDA device exists.
"""

import sys

import numpy as np
import pytest

from conftest import randomize_output_layer
from devicecases import LAYERS, layer_on, three_steps
from npconv import backend, models
from npconv.errors import SettingError

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)


def test_numpy_is_the_default():
    assert backend.xp is np and backend.current_device() == "cpu"


def test_cuda_without_cupy_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy raises ImportError
    with pytest.raises(SettingError) as e:
        backend.use_device("cuda")
    assert e.value.name == "device" and 'pip install "npconv[cuda]"' in str(e.value) and "CuPy" in str(e.value)
    assert backend.xp is np, "a failed switch leaves the backend as it was"


def test_cuda_without_a_device_says_so(monkeypatch):
    import fakecupy

    class NoDevice:
        @staticmethod
        def getDeviceCount():  # noqa: N802
            raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    monkeypatch.setattr(fakecupy.cuda, "runtime", NoDevice)
    monkeypatch.setitem(sys.modules, "cupy", fakecupy)
    with pytest.raises(SettingError, match="CuPy is installed but finds no CUDA device .*no CUDA-capable device"):
        backend.use_device("cuda")
    assert backend.xp is np


def test_unknown_device():
    with pytest.raises(SettingError, match="device must be one of cpu, cuda, got 'tpu'"):
        backend.use_device("tpu")


@pytest.mark.parametrize("engine", ["reference", "fast"])
@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_every_layer_gives_the_same_numbers_on_the_device(fake_gpu, rng, name, dtype, engine):
    """The textbook layer, and the engine's kernel of it: the same numbers on the device as on the host."""
    x = rng.standard_normal(LAYERS[name][1]).astype(dtype)
    y, dx, grads, dy = layer_on("cpu", name, dtype, x, rng, engine=engine)
    yd, dxd, gradsd, _ = layer_on("cuda", name, dtype, x, rng, dy, engine=engine)
    assert isinstance(yd, fake_gpu.ndarray) and isinstance(dxd, fake_gpu.ndarray), "results stay on the device"
    np.testing.assert_array_equal(backend.to_numpy(yd), y, err_msg=f"{name} forward: device / host")
    np.testing.assert_array_equal(backend.to_numpy(dxd), dx, err_msg=f"{name} backward: device / host")
    for n in grads:
        np.testing.assert_array_equal(backend.to_numpy(gradsd[n]), grads[n], err_msg=f"{name} {n}.grad")
    assert backend.to_numpy(yd).dtype == dtype


@pytest.mark.parametrize("engine", ["reference", "fast"])
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_a_model_trains_on_the_device_like_on_the_host(fake_gpu, rng, opt, engine, monkeypatch):
    """Three steps of the study's ConvNet with dropout: the same weights, bit for bit, and no host round trip
    inside a step but the loss's own value. (The host's blocked products for AVX-512 BLAS, which add the long
    sums in another order, are turned off: both sides then compute the same sums in the same order.)"""
    import npconv.engine.products

    monkeypatch.setattr(npconv.engine.products, "BLOCKED_PRODUCTS", False)
    x = rng.standard_normal((8, 1, 28, 28))
    labels = rng.integers(0, 10, size=8)
    host, host_losses = three_steps("cpu", opt, x, labels, engine=engine)
    syncs = {}
    device, device_losses = three_steps("cuda", opt, x, labels, on_start=fake_gpu.reset,
                                        on_end=lambda: syncs.update(fake_gpu.SYNCS), engine=engine)
    for n in host:
        np.testing.assert_array_equal(device[n], host[n], err_msg=f"{n}: device / host")
    assert [float(v) for v in device_losses] == host_losses
    assert sum(syncs.values()) == 0, f"host round trips in 3 steps: {syncs}"


def test_files_travel_between_backends(fake_gpu, tmp_path):
    """A model trained on the device is saved as host arrays, loads on the CPU and back on the device."""
    from npconv.train.modelfile import load_model, save_model

    config = {"model": "cnn", "dropout": 0.0, "dropout_at": "before-fc", "dtype": "float32", "num_classes": 10}
    backend.use_device("cuda")
    model = randomize_output_layer(models.cnn(rng=np.random.default_rng(0)), np.random.default_rng(1))
    save_model(tmp_path / "m.npz", model, config)
    x = np.random.default_rng(2).standard_normal((3, 1, 28, 28)).astype(F32)
    on_device = backend.to_numpy(model.eval()(backend.to_device(x)))
    backend.use_device("cpu")
    host_model, _ = load_model(tmp_path / "m.npz")
    np.testing.assert_array_equal(host_model.eval()(x), on_device)
    with np.load(tmp_path / "m.npz", allow_pickle=False) as f:
        assert all(isinstance(f[k], np.ndarray) for k in f.files), "files hold host arrays"
    backend.use_device("cuda")
    device_model, _ = load_model(tmp_path / "m.npz")
    assert isinstance(device_model[0].weight.data, fake_gpu.ndarray), "loaded onto the current backend"
    np.testing.assert_array_equal(backend.to_numpy(device_model.eval()(backend.to_device(x))), on_device)


def test_a_run_on_the_device_is_the_run_on_the_host(fake_gpu, tmp_path):
    """``run_training`` with ``device="cuda"``: the same history and weights as on the CPU, bit for bit (an mlp,
    which the CPU runs whole, as a device does); the dataset goes up once, and the host waits for the device a
    few times an epoch, not at every step."""
    from npconv.train import TrainConfig, run_training

    quiet = dict(progress=False, log=lambda *a: None)
    config = dict(model="mlp", train_subset=1000, epochs=2, batch_size=50, dropout=0.2, seed=4)
    run_training(TrainConfig(**config), tmp_path / "cpu", **quiet)
    fake_gpu.reset()
    run_training(TrainConfig(**config, device="cuda"), tmp_path / "cuda", **quiet)
    syncs, uploads = dict(fake_gpu.SYNCS), dict(fake_gpu.UPLOADS)
    assert backend.current_device() == "cuda", "the fixture's backend is restored after the run"

    def rows(run):
        return [line.rsplit(",", 1)[0] for line in (tmp_path / run / "history.csv").read_text().splitlines()]

    assert rows("cuda") == rows("cpu"), "history.csv but for its seconds column"
    with np.load(tmp_path / "cpu" / "model.npz") as a, np.load(tmp_path / "cuda" / "model.npz") as b:
        for name in a.files:
            if name != "__config__":
                np.testing.assert_array_equal(b[name], a[name], err_msg=name)
    # Twice the steps (batch 25): the host waits as often -- per epoch (evaluation, health, checkpoint),
    # and once per CHECK_EVERY steps for divergence -- not once a step.
    fake_gpu.reset()
    run_training(TrainConfig(**{**config, "batch_size": 25}, device="cuda"), tmp_path / "cuda25", **quiet)
    more_steps = dict(fake_gpu.SYNCS)
    assert sum(more_steps.values()) - sum(syncs.values()) <= 2, f"batch 50: {syncs}; batch 25: {more_steps}"
    data_bytes = (1000 + 10_000) * 784 * 4 + (1000 + 10_000) * 8  # images (float32) and labels, once
    assert uploads["bytes"] < 1.1 * data_bytes, f"uploads: {uploads}, the data itself: {data_bytes} bytes"


def test_a_run_checkpointed_on_one_device_resumes_on_the_other(fake_gpu, tmp_path):
    """Files are host arrays: a cpu checkpoint resumes on cuda (and back), and the device is recorded."""
    import json

    from npconv.train import TrainConfig, resume_training, run_training

    quiet = dict(progress=False, log=lambda *a: None)
    config = dict(model="mlp", train_subset=600, epochs=2, batch_size=50, lr_schedule="constant", seed=1)
    run_training(TrainConfig(**config), tmp_path / "whole", **quiet)
    run_training(TrainConfig(**{**config, "epochs": 1}), tmp_path / "split", **quiet)
    summary = resume_training(tmp_path / "split", epochs=2, settings={"device": "cuda"}, **quiet)
    assert summary.status == "completed"
    assert json.loads((tmp_path / "split" / "config.json").read_text())["device"] == "cuda"
    whole = (tmp_path / "whole" / "history.csv").read_text().splitlines()
    split = (tmp_path / "split" / "history.csv").read_text().splitlines()
    assert [r.rsplit(",", 1)[0] for r in split] == [r.rsplit(",", 1)[0] for r in whole]
