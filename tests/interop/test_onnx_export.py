"""``npconv export --format onnx``: every preset and an architecture file with every layer type, run by ONNX Runtime on
real MNIST test images, agree with npconv; export -> import gives the same weights, bit for bit."""

import json

import numpy as np
import pytest

from conftest import write_architecture_file

from npconv import __version__, nn
from npconv.inference import model_input
from npconv.onnx.export import export_onnx
from npconv.onnx.importer import import_onnx
from npconv.train.modelfile import load_model, save_model

from .cases import EVERY_LAYER, MEAN, STD, model_and_config, pixels, session

#: npconv's logits and ONNX Runtime's agree to this share of the largest |logit|.
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def every_layer_file(tmp_path_factory):
    """A TOML architecture file that uses every layer type."""
    return write_architecture_file(tmp_path_factory.mktemp("model-file") / "every-layer.toml", EVERY_LAYER)


@pytest.fixture(params=["cnn", "mlp", "lenet5", "cnn-bn", "every-layer.toml"])
def exported(request, every_layer_file, tmp_path, onnx):
    """(model, config, model.npz, model.onnx) for each preset and the every-layer model file."""
    name = every_layer_file if request.param.endswith(".toml") else request.param
    model, config = model_and_config(name)
    save_model(tmp_path / "model.npz", model, config)
    assert export_onnx(tmp_path / "model.npz", tmp_path / "model.onnx") == []
    model, config = load_model(tmp_path / "model.npz")  # what a user's model file gives: the same model
    return model.eval(), config, tmp_path / "model.npz", tmp_path / "model.onnx"


def npconv_logits(model, config, images):
    with nn.no_grad():
        return model(model_input(images, config))


def test_onnx_runtime_agrees_with_npconv_at_batch_1000(exported, ort, test_images):
    model, config, _, path = exported
    expected = npconv_logits(model, config, test_images)
    got = session(ort, path).run(None, {"pixels": pixels(test_images)})[0]
    assert got.shape == (1000, 10) and got.dtype == np.float32
    error = np.abs(got - expected).max() / np.abs(expected).max()
    assert error <= TOLERANCE, f"ONNX Runtime differs from npconv by {error:.2e} of the largest logit"
    assert (got.argmax(1) == expected.argmax(1)).mean() > 0.99


def test_onnx_runtime_agrees_with_npconv_at_batch_1(exported, ort, test_images):
    model, config, _, path = exported
    runtime = session(ort, path)
    sample = test_images[::20]  # 50 images, one at a time
    expected = npconv_logits(model, config, sample)
    got = np.concatenate([runtime.run(None, {"pixels": pixels(image[None])})[0] for image in sample])
    error = np.abs(got - expected).max() / np.abs(expected).max()
    assert error <= TOLERANCE, f"ONNX Runtime (one image at a time) differs from npconv by {error:.2e}"


def test_the_graph_is_valid_dynamic_and_described(exported, onnx):
    _, config, _, path = exported
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    (given,) = proto.graph.input
    dims = given.type.tensor_type.shape.dim
    assert given.name == "pixels" and dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 28, 28]
    assert given.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    (output,) = proto.graph.output
    assert output.name == "logits" and output.type.tensor_type.shape.dim[1].dim_value == 10
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["classes"]) == [str(i) for i in range(10)] and meta["dataset"] == "mnist"
    assert meta["npconv_version"] == __version__
    assert (json.loads(meta["normalize_mean"]), json.loads(meta["normalize_std"])) == (MEAN, STD)
    # The normalization is the graph's first two nodes, on the pixels.
    first, second = proto.graph.node[:2]
    assert (first.op_type, first.input[0], second.op_type, second.input[0]) == ("Sub", "pixels", "Div",
                                                                                 first.output[0])


def test_export_then_import_gives_the_same_weights_bit_for_bit(exported, tmp_path, test_images):
    model, config, _, path = exported
    assert import_onnx(path, tmp_path / "back.npz") == []  # npconv's own graph names its dataset and classes
    back, back_config = load_model(tmp_path / "back.npz")

    def weights(m):  # in order; Dropout, which the graph leaves out, has none; the ONNX graph has no step count
        return [(name.split(".", 1)[1], value) for name, value in m.state_dict().items()
                if not name.endswith("num_batches_tracked")]

    ours, theirs = weights(model), weights(back)
    assert [n for n, _ in ours] == [n for n, _ in theirs]
    for (name, a), (_, b) in zip(ours, theirs):
        assert a.dtype == b.dtype and np.array_equal(a, b), f"{name} changed on the way through ONNX"
    for key in ("classes", "dataset", "normalize_mean", "normalize_std", "num_classes"):
        assert back_config[key] == config[key], key
    if config["model_layers"] is not None:  # the same layers, but the dropout (the identity at inference)
        assert back_config["model_layers"] == [layer for layer in config["model_layers"] if layer["type"] != "dropout"]
    np.testing.assert_array_equal(npconv_logits(back.eval(), back_config, test_images[:100]),
                                  npconv_logits(model, config, test_images[:100]))


@pytest.mark.parametrize("mean, std", [(None, None), (None, 1 / 255)], ids=["pixels-0-1", "pixels-0-255"])
def test_the_graph_scales_pixels_as_the_model_was_trained(mean, std, tmp_path, onnx, ort, test_images):
    model, config = model_and_config("cnn", mean=mean, std=std)
    save_model(tmp_path / "model.npz", model, config)
    export_onnx(tmp_path / "model.npz", tmp_path / "model.onnx")
    ops = [n.op_type for n in onnx.load(str(tmp_path / "model.onnx")).graph.node]
    assert ops[0] == ("Conv" if std is None else "Div")
    expected = npconv_logits(model, config, test_images)
    got = session(ort, tmp_path / "model.onnx").run(None, {"pixels": pixels(test_images)})[0]
    assert np.abs(got - expected).max() <= TOLERANCE * np.abs(expected).max()


def test_a_float64_model_is_written_in_float32_with_a_note(tmp_path, onnx, ort, test_images):
    model, config = model_and_config("cnn-bn", dtype="float64")
    save_model(tmp_path / "model.npz", model, config)
    notes = export_onnx(tmp_path / "model.npz", tmp_path / "model.onnx")
    assert len(notes) == 1 and "float32" in notes[0], notes
    expected = npconv_logits(model, config, test_images)
    got = session(ort, tmp_path / "model.onnx").run(None, {"pixels": pixels(test_images)})[0]
    assert np.abs(got - expected).max() <= TOLERANCE * np.abs(expected).max()


def test_batch_norm_without_gamma_and_beta_exports_and_comes_back_with_ones_and_zeros(tmp_path, onnx, ort,
                                                                                       test_images):
    layers = [{"type": "conv2d", "out_channels": 4, "kernel_size": 3}, {"type": "batchnorm2d", "affine": False},
              {"type": "relu"}, {"type": "flatten"}, {"type": "linear", "out_features": 10}]
    model, config = model_and_config(write_architecture_file(tmp_path / "plain-bn.toml", layers))
    save_model(tmp_path / "model.npz", model, config)
    export_onnx(tmp_path / "model.npz", tmp_path / "model.onnx")
    expected = npconv_logits(model, config, test_images)
    got = session(ort, tmp_path / "model.onnx").run(None, {"pixels": pixels(test_images)})[0]
    assert np.abs(got - expected).max() <= TOLERANCE * np.abs(expected).max()
    import_onnx(tmp_path / "model.onnx", tmp_path / "back.npz")
    back, back_config = load_model(tmp_path / "back.npz")
    assert back_config["model_layers"][1]["affine"] is True
    assert np.array_equal(back[1].weight.data, np.ones(4)) and np.array_equal(back[1].bias.data, np.zeros(4))
    np.testing.assert_array_equal(npconv_logits(back.eval(), back_config, test_images[:50]),
                                  npconv_logits(model, config, test_images[:50]))
