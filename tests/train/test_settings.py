"""The settings schema: every setting declared once, and everything that takes settings derived from it."""

import subprocess
import sys

import pytest

from conftest import write_architecture_file

from npconv.errors import NpconvError, SettingError
from npconv.experiments.study import parse_study, study_cells
from npconv.experiments.sweep import parse_values
from npconv.train.settings import ARCHITECTURE, SETTINGS, TrainConfig, make_config

#: A value other than the default, as text, for every setting.
SAMPLE = {"model": "mlp", "dataset": "fashion-mnist", "data_dir": "/tmp", "epochs": "3", "batch_size": "64",
          "optimizer": "adam", "lr": "0.01", "lr_schedule": "constant", "momentum": "0.5", "weight_decay": "0.001",
          "dropout": "0.2", "dropout_at": "before-pool", "seed": "7", "train_subset": "500", "val_split": "0.1",
          "normalize": "false", "dtype": "float64", "init_std": "0.01", "zero_classifier": "false",
          "pixel_range": "0-255", "loss_reduction": "sum", "weight_decay_reduction": "sum", "stable_softmax": "false",
          "augment_shift": "2", "device": "cuda", "engine": "reference", "plan": "built-in",
          "init_from": "runs/first/model.npz"}


def help_text(command):
    return subprocess.run([sys.executable, "-m", "npconv", command, "--help"], capture_output=True, text=True,
                          check=True).stdout


def test_every_setting_has_a_sample_here():
    assert set(SAMPLE) == set(SETTINGS), "a new setting needs a sample value in this test"


@pytest.mark.parametrize("name", list(SETTINGS))
def test_every_setting_can_be_swept(name):
    spec = SETTINGS[name]
    values = parse_values(name, f"{SAMPLE[name]},{SAMPLE[name]}")
    assert len(values) == 1, "a repeated value is kept once"
    config = make_config({name: values[0]})
    assert getattr(config, name) == values[0] != spec.default


def test_every_setting_is_a_train_and_a_sweep_option():
    train, sweep = help_text("train"), help_text("sweep")
    for name, spec in SETTINGS.items():
        flag = f"--no-{name.replace('_', '-')}" if spec.kind is bool and spec.default else spec.flag
        assert flag in train, f"{flag} missing from npconv train --help"
        assert spec.flag in sweep, f"{spec.flag} missing from npconv sweep --help"


def test_train_help_shows_the_real_defaults():
    train = " ".join(help_text("train").split())
    for name in ("batch_size", "lr", "momentum", "weight_decay", "lr_schedule", "dtype"):
        assert f"(default: {SETTINGS[name].default})" in train, f"{name}'s default missing from --help"
    # A preset's own defaults (MODEL_DEFAULTS) follow the default.
    assert f"(default: {SETTINGS['epochs'].default}; 15 for cnn-" in train, "epochs' defaults missing from --help"


def test_every_setting_can_be_varied_in_a_study_file():
    for name in SETTINGS:
        if name in ("data_dir", "dataset"):
            continue  # they need data on disk; their parsing is the same code
        if name == "seed":  # the study's own `seeds` list: a section that varies it is refused, saying so
            doc = {"section": [{"id": "s", "kind": "sweep", "vary": "seed", "values": [1, 2]}]}
            with pytest.raises(NpconvError, match="a study's seeds are its `seeds` list"):
                parse_study(doc, "test")
            continue
        value = make_config({name: SETTINGS[name].parse(SAMPLE[name])}).canonical()[name]
        baseline = {"model": "mlp" if name != "dropout_at" else "cnn"}
        if name == "pixel_range":
            baseline["normalize"] = False  # 0-255 pixels need standardization off
        doc = {"baseline": baseline,
               "section": [{"id": "s", "kind": "sweep", "vary": name, "values": [value]}]}
        (cell,) = study_cells(parse_study(doc, "test"))
        assert cell.config.canonical()[name] == value, f"{name}: the study trains {cell.config.canonical()[name]!r}"


def test_defaults_are_npconv_trains():
    config = TrainConfig()
    assert {name: getattr(config, name) for name in SETTINGS} == {n: s.default for n, s in SETTINGS.items()}
    config.validate()


@pytest.mark.parametrize("name, value, message", [
    ("lr", -1.0, "lr must be a finite number > 0, got -1.0"),
    ("lr", float("nan"), "lr must be a finite number > 0, got nan"),
    ("momentum", 1.0, "momentum must be in [0, 1), got 1.0"),
    ("batch_size", 0, "batch_size must be an integer >= 1, got 0"),
    ("epochs", 2.5, "epochs must be an integer >= 1, got 2.5"),
    ("model", "resnet", "model must be one of cnn, mlp, lenet5, cnn-bn, or a .toml file, got 'resnet'"),
    ("normalize", 1, "normalize must be true or false, got 1"),
    ("data_dir", "/no/such/folder", "data_dir /no/such/folder: no such directory"),
])
def test_library_errors_name_the_setting_in_library_words(name, value, message):
    with pytest.raises(SettingError) as e:
        TrainConfig(**{name: value}).validate()
    assert str(e.value) == message and e.value.name == name
    assert "--" not in str(e.value), "the library does not speak in command-line flags"


def test_make_config_coerces_and_refuses():
    assert make_config({"lr": 1}).lr == 1.0 and isinstance(make_config({"lr": 1}).lr, float)
    with pytest.raises(SettingError, match="speed is not a training setting"):
        make_config({"speed": 1})
    with pytest.raises(SettingError, match="epochs must be int, got 1.5"):
        make_config({"epochs": 1.5})
    with pytest.raises(SettingError, match="normalize must be bool"):
        make_config({"normalize": 0})


def test_architecture_settings_are_what_a_model_file_records():
    assert ARCHITECTURE == ["model", "dropout", "dropout_at", "dtype"]


def test_run_keys_of_the_first_settings_are_stable():
    """The key of a run must not change when npconv gains a setting: sweeps find and reuse the runs they made
    (the expected key is the one the code before the settings schema computed)."""
    from npconv.experiments.sweep import run_key

    key = run_key(TrainConfig(model="mlp", lr=0.01, seed=2), "d" * 64, version="0.1.0")
    assert key == "76aaf934bde3e4055f87f68d7fed29bb760763c843f218503e748ab17035ef43", "the key npconv 0.1.0 gave"


# --- architecture files and the presets' own defaults ---------------------------------------------------

NET = [{"type": "flatten"}, {"type": "linear", "out_features": 32}, {"type": "relu"},
       {"type": "linear", "out_features": 10}]


def test_an_architecture_file_is_read_once_and_keys_the_run(tmp_path):
    from dataclasses import asdict

    from npconv.experiments.sweep import run_key

    path = tmp_path / "net.toml"
    write_architecture_file(path, NET)
    config = make_config({"model": str(path)})
    config.validate()
    assert config.model_layers[1] == {"type": "linear", "in_features": 784, "out_features": 32}
    key = run_key(config, "d" * 64)
    assert config.canonical()["model_layers"] == config.model_layers

    write_architecture_file(path, [NET[0], {**NET[1], "out_features": 64}, *NET[2:]])
    changed = make_config({"model": str(path)})
    changed.validate()
    assert run_key(changed, "d" * 64) != key, "another architecture in the same file is another run"

    path.unlink()  # a config that holds its layers (read back from config.json) never reads the file again
    again = TrainConfig.from_dict(asdict(config), "config.json")
    again.validate()
    assert run_key(again, "d" * 64) == key


def test_a_bad_architecture_file_is_a_setting_error_naming_the_file_and_the_layer(tmp_path):
    path = tmp_path / "net.toml"
    write_architecture_file(path, [{"type": "relu"}, *NET[1:]])
    with pytest.raises(SettingError) as e:
        make_config({"model": str(path)}).validate()
    assert e.value.name == "model"
    assert e.value.detail == f"{path}: layer 1 (linear): needs flat input (N, features), gets 1x28x28 images: " \
                             "put a flatten layer before it"


def test_layers_belong_to_architecture_files_only():
    with pytest.raises(SettingError, match="cnn is a preset: model_layers are for an architecture file only"):
        TrainConfig(model="cnn", model_layers=[{"type": "flatten"}]).validate()


@pytest.mark.parametrize("model, dropout_at, fits", [
    ("lenet5", "before-pool", True), ("lenet5", "before-conv", True), ("cnn-bn", "before-fc", True),
    ("net.toml", "before-fc", True), ("net.toml", "before-conv", False), ("net.toml", "before-pool", False),
])
def test_dropout_goes_only_where_the_model_has_such_layers(tmp_path, monkeypatch, model, dropout_at, fits):
    monkeypatch.chdir(tmp_path)
    write_architecture_file(tmp_path / "net.toml", NET)
    config = make_config({"model": model, "dropout": 0.2, "dropout_at": dropout_at})
    if fits:
        config.validate()
    else:
        with pytest.raises(SettingError, match=f"dropout_at {dropout_at}: the model net.toml has no layer of that"):
            config.validate()


def test_a_preset_trains_with_its_own_defaults_unless_told_otherwise():
    from npconv.train.settings import MODEL_DEFAULTS

    own = MODEL_DEFAULTS["cnn-bn"]
    config = make_config({"model": "cnn-bn"})
    assert {name: getattr(config, name) for name in own} == own
    assert make_config({"model": "cnn-bn", "epochs": 3}).epochs == 3, "a setting given wins"
    assert make_config({"model": "cnn"}).augment_shift == 0 and make_config({}).epochs == SETTINGS["epochs"].default


def test_a_run_recorded_before_a_setting_existed_reads_back_with_its_default():
    recorded = {name: spec.default for name, spec in SETTINGS.items() if name != "augment_shift"}
    assert TrainConfig.from_dict(recorded, "config.json").augment_shift == 0
