"""The engine computes the textbook's numbers: every layer, every preset and an architecture file, training and
inference.

float64: to 1e-12 of the largest value (the engine adds the same terms in another order: blocks, chunks, BLAS
row sums); float32: to rounding. ``npconv train --engine reference`` and ``--engine fast`` agree to 1e-9 after an
epoch in float64, and a run on either engine resumes bit for bit.
"""

import numpy as np
import pytest
from conftest import small_bn_net, write_architecture_file

from npconv import data, engine, models, nn, optim
from npconv.engine import conv as conv_module
from npconv.engine.chain import kernel_for
from npconv.train import TrainConfig, resume_training, run_training
from npconv.train.interrupt import Interrupted
from npconv.train.settings import make_config

QUIET = {"progress": False, "log": lambda line: None}
TOLERANCE = {np.float64: 1e-12, np.float32: 2e-5}


def assert_same(engine_value, textbook_value, what, dtype):
    """``engine_value`` equals ``textbook_value`` to TOLERANCE[dtype] of the largest magnitude."""
    textbook_value = np.asarray(textbook_value)
    scale = max(float(np.max(np.abs(textbook_value))), 1e-30) if textbook_value.size else 1.0
    np.testing.assert_allclose(engine_value, textbook_value, rtol=0, atol=TOLERANCE[dtype] * scale,
                               err_msg=f"{what}: engine / textbook")


def twin_layers(make):
    """Two layers made alike (the same weights; a Dropout's generator in the same state)."""
    return make(np.random.default_rng(3)), make(np.random.default_rng(3))


LAYERS = {
    "conv": (lambda rng, dt: nn.Conv2d(3, 4, 3, padding=1, rng=rng, dtype=dt), (6, 3, 7, 7)),
    "conv-stride-2": (lambda rng, dt: nn.Conv2d(3, 5, (3, 2), stride=2, padding=(0, 1), rng=rng, dtype=dt),
                      (4, 3, 9, 8)),
    "conv-5x5": (lambda rng, dt: nn.Conv2d(2, 3, 5, padding=2, rng=rng, dtype=dt), (3, 2, 8, 8)),
    "linear": (lambda rng, dt: nn.Linear(12, 5, rng=rng, dtype=dt), (7, 12)),
    "relu": (lambda rng, dt: nn.ReLU(), (5, 3, 4, 4)),
    "sigmoid": (lambda rng, dt: nn.Sigmoid(), (5, 6)),
    "tanh": (lambda rng, dt: nn.Tanh(), (5, 6)),
    "maxpool": (lambda rng, dt: nn.MaxPool2d(2), (4, 3, 6, 6)),
    "maxpool-overlapping": (lambda rng, dt: nn.MaxPool2d(3, stride=2), (4, 3, 7, 7)),
    "avgpool": (lambda rng, dt: nn.AvgPool2d(3, stride=2, padding=1), (4, 3, 7, 7)),
    "batchnorm2d": (lambda rng, dt: nn.BatchNorm2d(3, dtype=dt), (6, 3, 4, 5)),
    "batchnorm1d": (lambda rng, dt: nn.BatchNorm1d(5, dtype=dt), (8, 5)),
    "batchnorm1d-NCL": (lambda rng, dt: nn.BatchNorm1d(4, momentum=None, affine=False, dtype=dt), (6, 4, 3)),
    "dropout": (lambda rng, dt: nn.Dropout(0.3, rng=rng), (6, 10)),
    "flatten": (lambda rng, dt: nn.Flatten(), (4, 3, 2, 2)),
}


def _randomize(layer, rng):
    """Parameters and running statistics away from their initial ones, so that every term counts."""
    for p in layer.parameters():
        p.data[...] = rng.standard_normal(p.data.shape)
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
        layer.running_mean.data[...] = rng.standard_normal(layer.num_features)
        layer.running_var.data[...] = rng.uniform(0.5, 2, layer.num_features)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_every_layer_kernel_computes_the_textbook_layer(rng, name, training, dtype, monkeypatch):
    make, shape = LAYERS[name]
    textbook, fast = twin_layers(lambda r: make(r, dtype))
    for layer in (textbook, fast):
        _randomize(layer, np.random.default_rng(5))
        layer.train(training)
    kernel = kernel_for(fast)
    x = rng.standard_normal(shape).astype(dtype) * 2 + 0.5
    y = textbook(x)
    y_fast = kernel.forward(x)
    assert_same(y_fast, y, f"{name} y", dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    assert_same(kernel.backward(dy), textbook.backward(dy), f"{name} dx", dtype)
    for (pname, p), q in zip(textbook.named_parameters(), fast.parameters()):
        assert_same(q.grad, p.grad, f"{name} d{pname}", dtype)
    for (bname, b), c in zip(textbook.named_buffers(), fast.buffers()):
        assert_same(c.data, b.data, f"{name} {bname}", dtype)
    with nn.no_grad():  # inference: the same numbers, nothing kept
        assert_same(kernel.forward(x), textbook(x), f"{name} y under no_grad", dtype)
    with pytest.raises(RuntimeError, match="no_grad"):
        kernel.backward(dy)


def test_a_kernel_refuses_backward_before_forward():
    with pytest.raises(RuntimeError, match=r"Conv2d.backward\(\) called before forward\(\)"):
        kernel_for(nn.Conv2d(1, 2, 3)).backward(np.zeros((1, 2, 3, 3), np.float32))


def test_a_convolution_in_row_blocks_computes_the_textbook_layer(rng, monkeypatch):
    monkeypatch.setattr(conv_module, "WHOLE_BYTES", 0)
    monkeypatch.setattr(conv_module, "BLOCK_BYTES", 1)
    monkeypatch.setattr(conv_module, "MIN_COPY_BYTES", 0)
    textbook, fast = twin_layers(lambda r: nn.Conv2d(3, 4, 3, stride=2, padding=1, rng=r, dtype=np.float64))
    kernel = kernel_for(fast)
    x = rng.standard_normal((5, 3, 9, 9))
    y = kernel.forward(x)
    assert len(kernel._saved[2]) > 1, "the layer should run in several blocks of output rows"
    assert_same(y, textbook(x), "y", np.float64)
    dy = rng.standard_normal(y.shape)
    assert_same(kernel.backward(dy), textbook.backward(dy), "dx", np.float64)
    assert_same(fast.weight.grad, textbook.weight.grad, "dW", np.float64)


MODEL_FILE_LAYERS = [
    {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1}, {"type": "batchnorm2d"},
    {"type": "tanh"}, {"type": "avgpool2d", "kernel_size": 2}, {"type": "conv2d", "out_channels": 6,
                                                              "kernel_size": 3, "stride": 2},
    {"type": "sigmoid"}, {"type": "maxpool2d", "kernel_size": 2}, {"type": "flatten"},
    {"type": "linear", "out_features": 16}, {"type": "batchnorm1d"}, {"type": "relu"},
    {"type": "linear", "out_features": 10},
]


def build(name, dtype, tmp_path):
    if name == "model-file":
        path = write_architecture_file(tmp_path / "net.toml", MODEL_FILE_LAYERS)
        return models.build_model(path, rng=np.random.default_rng(0), dtype=dtype)
    return models.build_model(name, rng=np.random.default_rng(0), dtype=dtype)


@pytest.fixture(scope="module")
def mnist_batches():
    mnist = data.load_dataset("mnist")
    mean, std = data.pixel_stats(mnist.train_images)
    return {dtype: (data.to_float(mnist.train_images[:300], mean, std, np.dtype(dtype)), mnist.train_labels[:300],
                    data.to_float(mnist.test_images[:250], mean, std, np.dtype(dtype)))
            for dtype in (np.float64, np.float32)}


def train_steps(net, model, x, y, steps=3, batch=120):
    """``steps`` SGD steps on batches of ``batch`` (cut into chunks by the fast engine); the losses."""
    loss_fn = nn.SoftmaxCrossEntropyLoss()
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    losses = []
    for s in range(steps):
        xb, yb = x[s * 60 : s * 60 + batch], y[s * 60 : s * 60 + batch]
        opt.zero_grad()
        losses.append(float(loss_fn(net(xb), yb)))
        net.backward(loss_fn.backward(), input_grad=False)
        opt.step()
    return losses


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", [*models.MODELS, "model-file"])
def test_every_preset_trains_and_infers_on_the_engine_as_on_the_textbook(mnist_batches, tmp_path, name, dtype):
    """Three training steps of 120 images (chunks and, with batch norm, pooled statistics), then inference on
    250 test images (pieces): the same losses, weights, running statistics and logits."""
    x, y, x_test = mnist_batches[dtype]
    textbook, fast = build(name, dtype, tmp_path), build(name, dtype, tmp_path)
    net = engine.compile(fast)
    assert engine.compile(textbook, "reference") is textbook
    tolerance = TOLERANCE[dtype] * (1 if dtype == np.float64 else 50)  # float32: three steps of rounding
    np.testing.assert_allclose(train_steps(net, fast, x, y), train_steps(textbook, textbook, x, y),
                               rtol=tolerance, err_msg="losses: engine / textbook")
    assert net.sizes is None or len(net.sizes) > 1 or name == "mlp"
    for (key, a), b in zip(textbook.state_dict().items(), fast.state_dict().values()):
        # A floor for the values that are noise around 0 (a convolution's bias before a batch norm: no gradient).
        scale = max(float(np.max(np.abs(a))), 1e-3)
        np.testing.assert_allclose(b, a, rtol=0, atol=tolerance * scale, err_msg=f"{key}: engine / textbook")
    net.eval()
    textbook.eval()
    with nn.no_grad():
        logits_fast, logits = net(x_test), textbook(x_test)
    scale = float(np.max(np.abs(logits)))
    np.testing.assert_allclose(logits_fast, logits, rtol=0, atol=tolerance * scale, err_msg="logits")


@pytest.mark.parametrize("name", models.MODELS)
def test_the_two_engines_agree_after_an_epoch_in_float64(small_mnist, tmp_path, name):
    settings = {"model": name, "data_dir": small_mnist, "epochs": 1, "dtype": "float64"}
    fast = run_training(make_config({**settings, "engine": "fast"}), tmp_path / "fast", **QUIET)
    reference = run_training(make_config({**settings, "engine": "reference"}), tmp_path / "reference", **QUIET)
    assert fast.test_loss == pytest.approx(reference.test_loss, rel=1e-9), (fast.test_loss, reference.test_loss)


def test_a_run_on_the_reference_engine_resumes_bit_identical(small_mnist, tmp_path):
    net = write_architecture_file(tmp_path / "bn.toml", small_bn_net(hidden=8))
    settings = {"model": net, "data_dir": small_mnist, "epochs": 2, "engine": "reference", "batch_size": 150}
    whole = run_training(make_config(settings), tmp_path / "whole", **QUIET)

    def stop_after_epoch_1(line):
        if line.startswith("epoch 1/"):
            raise KeyboardInterrupt

    with pytest.raises(Interrupted):
        run_training(make_config(settings), tmp_path / "run", progress=False, log=stop_after_epoch_1)
    resumed = resume_training(tmp_path / "run", **QUIET)
    assert resumed.status == "completed" and resumed.test_loss == whole.test_loss
    with np.load(tmp_path / "whole" / "model.npz") as a, np.load(tmp_path / "run" / "model.npz") as b:
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_an_old_config_without_engine_means_fast():
    """A config.json written before the setting existed reads as fast; at its default it is not in the run key,
    so the keys of runs made before it existed (by 0.2.3's sweeps) still find them."""
    old = {k: v for k, v in vars(TrainConfig()).items() if k != "engine"}
    assert TrainConfig.from_dict(old, "config.json").engine == "fast"
    assert "engine" not in TrainConfig().canonical(), "the default engine leaves run keys as they were"
    assert TrainConfig(engine="reference").canonical()["engine"] == "reference"


def test_an_unknown_engine_is_refused():
    with pytest.raises(ValueError, match="engine must be one of fast, reference"):
        engine.compile(models.mlp(), "turbo")


def test_a_layer_changed_after_compile_is_computed_as_it_is_now(rng):
    """The engine reads the layers at every step: a Dropout's p set after compile() counts, as does eval()."""
    model = nn.Sequential(nn.Linear(6, 6, rng=rng), nn.Dropout(0.5, rng=np.random.default_rng(0)))
    net = engine.compile(model)
    x = rng.standard_normal((4, 6))
    model[1].p = 0.0
    np.testing.assert_array_equal(net(x), model[0](x), err_msg="p = 0: the identity")
    model[1].p = 0.5
    assert (net(x) == 0).any(), "p = 0.5 drops some"
    np.testing.assert_array_equal(net.eval()(x), model[0](x), err_msg="eval(): the identity")
