"""Models described in a file: the TOML format, normalization, shape inference, clear errors; the presets."""

import numpy as np
import pytest

from npconv import models, nn
from npconv.models import ModelSpecError, check_layers, read_architecture_file

SMALL = """
[[layer]]
type = "Conv2d"          # type names are case-insensitive
out_channels = 4
kernel_size = [3, 3]     # a square pair is written back as one integer
padding = 1

[[layer]]
type = "batchnorm2d"
momentum = 0.2

[[layer]]
type = "relu"

[[layer]]
type = "avgpool2d"
kernel_size = 2

[[layer]]
type = "flatten"

[[layer]]
type = "linear"
out_features = 10
"""


def write(tmp_path, text, name="net.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_an_architecture_file_is_read_checked_and_normalized(tmp_path):
    layers = read_architecture_file(write(tmp_path, SMALL), num_classes=10)
    assert layers == [
        {"type": "conv2d", "in_channels": 1, "out_channels": 4, "kernel_size": 3, "stride": 1, "padding": 1},
        {"type": "batchnorm2d", "num_features": 4, "eps": 1e-5, "momentum": 0.2, "affine": True},
        {"type": "relu"},
        {"type": "avgpool2d", "kernel_size": 2, "stride": 2, "padding": 0},
        {"type": "flatten"},
        {"type": "linear", "in_features": 4 * 14 * 14, "out_features": 10},
    ]
    assert check_layers(layers, 10).layers == layers, "a normalized list is its own normal form"


def test_the_built_model_has_the_layers_the_file_lists(tmp_path, rng):
    path = write(tmp_path, SMALL)
    model = models.build_model(path, rng=rng)
    assert [type(layer) for layer in model] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.AvgPool2d, nn.Flatten,
                                                nn.Linear]
    assert model[1].momentum == 0.2 and model[0].padding == (1, 1)
    assert np.all(model[5].weight.data == 0), "the output layer starts at zero, as the presets' do"
    assert model(rng.standard_normal((2, 1, 28, 28))).shape == (2, 10)


def test_two_files_describing_the_same_network_record_the_same_layers(tmp_path):
    explicit = SMALL.replace("kernel_size = [3, 3]", "kernel_size = 3\nin_channels = 1\nstride = [1, 1]")
    a, b = write(tmp_path, SMALL, "a.toml"), write(tmp_path, explicit, "b.toml")
    assert read_architecture_file(a) == read_architecture_file(b)


BAD_FILES = [
    ("[[layer]]\ntype = 'conv2d'\nout_channels = 4\n", "layer 0 (conv2d): kernel_size is missing"),
    ("[[layer]]\ntype = 'resnet'\n", "layer 0: unknown type 'resnet'; known: conv2d, linear"),
    ("[[layer]]\nout_channels = 4\n", "layer 0: has no type; give one of: conv2d, linear"),
    ("[[layer]]\ntype = 'relu'\ninplace = true\n", "layer 0 (relu): unknown option 'inplace'; its options: none"),
    ("[[layer]]\ntype = 'conv2d'\nout_channels = 4\nkernel_size = 3\nkernal = 1\n",
     "layer 0 (conv2d): unknown option 'kernal'; its options: in_channels, out_channels"),
    ("[[layer]]\ntype = 'conv2d'\nout_channels = 0\nkernel_size = 3\n",
     "layer 0 (conv2d): out_channels must be an integer >= 1, got 0"),
    ("[[layer]]\ntype = 'conv2d'\nout_channels = 4\nkernel_size = 3.5\n",
     "layer 0 (conv2d): kernel_size must be an integer >= 1 or a pair of them, got 3.5"),
    ("[[layer]]\ntype = 'conv2d'\nout_channels = 4\nkernel_size = 29\n",
     "layer 0 (conv2d): on its 1x28x28 input: height: input size 28 (padded 28) is smaller than the kernel size 29"),
    ("[[layer]]\ntype = 'conv2d'\nout_channels = 4\nkernel_size = 3\nin_channels = 3\n",
     "layer 0 (conv2d): in_channels = 3, but its input has 1"),
    ("[[layer]]\ntype = 'linear'\nout_features = 10\n",
     "layer 0 (linear): needs flat input (N, features), gets 1x28x28 images: put a flatten layer before it"),
    ("[[layer]]\ntype = 'flatten'\n[[layer]]\ntype = 'batchnorm2d'\n",
     "layer 1 (batchnorm2d): needs images (N, C, H, W), gets 784 values"),
    ("[[layer]]\ntype = 'dropout'\np = 1.0\n", "layer 0 (dropout): p must be a number in [0, 1), got 1.0"),
    ("[[layer]]\ntype = 'batchnorm2d'\naffine = 1\n", "layer 0 (batchnorm2d): affine must be true or false, got 1"),
    ("[[layer]]\ntype = 'avgpool2d'\nkernel_size = 2\npadding = 2\n",
     "layer 0 (avgpool2d): padding 2 is more than half the kernel size"),
    ("[[layer]]\ntype = 'flatten'\n[[layer]]\ntype = 'linear'\nout_features = 12\n",
     "layer 1 (linear): the model's output is 12 values, but the data has 10 classes: end with a linear layer "
     "with out_features = 10"),
    ("[[layer]]\ntype = 'flatten'\n[[layer]]\ntype = 'linear'\nout_features = 100000\n"
     "[[layer]]\ntype = 'linear'\nout_features = 100000\n",
     "layer 2 (linear): the model has more than 100000000 parameters"),
    ("[[layer]]\ntype = 'conv2d'\nout_channels = 2000\nkernel_size = 1\n",
     "layer 0 (conv2d): its output has 1568000 values per image, more than the 1000000 a layer may have"),
    ("layer = []\n", "the layers must be a non-empty list"),
    ("[[layers]]\ntype = 'relu'\n", "unknown top-level key 'layers'; an architecture file lists [[layer]] tables"),
    ("name = 'x'\n", "unknown top-level key 'name'"),
    ("", "no [[layer]] tables"),
    ("[[layer]\ntype = 'relu'\n", "not a valid TOML architecture file"),
]


@pytest.mark.parametrize("text, message", BAD_FILES, ids=[m[:40] for _, m in BAD_FILES])
def test_a_bad_architecture_file_gets_one_line_naming_the_file_the_layer_and_the_problem(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ModelSpecError) as info:
        read_architecture_file(path, num_classes=10)
    text = str(info.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text, text


def test_a_missing_file_and_a_folder_are_clear_errors(tmp_path):
    with pytest.raises(ModelSpecError, match="no such architecture file"):
        read_architecture_file(str(tmp_path / "nope.toml"))
    (tmp_path / "dir.toml").mkdir()
    with pytest.raises(ModelSpecError, match="is a directory"):
        read_architecture_file(str(tmp_path / "dir.toml"))


@pytest.mark.parametrize("model, label", [("cnn", "cnn"), ("nets/small.toml", "small"), ("a b/c d.TOML", "c_d")])
def test_model_label(model, label):
    assert models.model_label(model) == label


# --- the presets ------------------------------------------------------------------------

def test_lenet5_has_the_classic_shapes_and_61706_parameters(rng):
    model = models.build_model("lenet5", rng=rng)
    shapes = [p.shape for p in model.parameters()]
    assert shapes == [(6, 1, 5, 5), (6,), (16, 6, 5, 5), (16,), (120, 400), (120,), (84, 120), (84,), (10, 84),
                      (10,)]
    assert sum(p.data.size for p in model.parameters()) == 61706
    assert sum(isinstance(layer, nn.AvgPool2d) for layer in model) == 2


def test_cnn_bn_has_batch_normalization_after_every_hidden_layer(rng):
    model = models.build_model("cnn-bn", rng=rng)
    kinds = [type(layer).__name__ for layer in model]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d",
                     "Flatten", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert len(model.buffers()) == 9


@pytest.mark.parametrize("name", models.MODELS)
def test_every_preset_gives_ten_logits_and_takes_every_dropout_location_it_has(rng, name):
    x = rng.standard_normal((3, 1, 28, 28)).astype(np.float32)
    assert models.build_model(name, rng=rng)(x).shape == (3, 10)
    for where in models.DROPOUT_LOCATIONS:
        if models.dropout_fits(name, where):
            model = models.build_model(name, 0.3, where, rng=rng)
            assert any(isinstance(layer, nn.Dropout) for layer in model), f"{name}: no dropout {where}"
        else:
            with pytest.raises(ValueError, match="this model has no"):
                models.build_model(name, 0.3, where, rng=rng)


def test_dropout_before_pool_goes_before_average_pooling_too(rng):
    model = models.build_model("lenet5", 0.2, "before-pool", rng=rng)
    kinds = [type(layer).__name__ for layer in model]
    assert kinds[1:4] == ["ReLU", "Dropout", "AvgPool2d"] and kinds.count("Dropout") == 2
