"""``init_from``: a run that starts from the weights and buffers of a model file instead of fresh ones."""

import json

import numpy as np
import pytest

from npconv.cli import main
from npconv.experiments.sweep import run_key
from npconv.models import build_model
from npconv.train import TrainConfig, run_training
from npconv.train import run as run_module
from npconv.train.modelfile import load_model, save_model
from npconv.train.settings import make_config

QUIET = dict(progress=False, log=lambda *_: None)
TINY = ["--train-subset", "200", "--batch-size", "50", "--epochs", "1", "--quiet"]


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """A completed mlp run (dropout, so the architecture taken from the file includes it)."""
    out = tmp_path_factory.mktemp("start") / "run"
    run_training(TrainConfig(model="mlp", dropout=0.1, train_subset=200, batch_size=50, epochs=1, seed=3), out,
                 **QUIET)
    return out


def weights_at_start(monkeypatch):
    """Record the run's weights as training begins (before its first step)."""
    seen = {}
    train = run_module._train

    def recording(run, *args, **kwargs):
        seen.update({k: v.copy() for k, v in run.model.state_dict().items()})
        return train(run, *args, **kwargs)

    monkeypatch.setattr(run_module, "_train", recording)
    return seen


def test_a_run_starts_from_the_files_weights_and_takes_its_architecture(start, tmp_path, monkeypatch):
    seen = weights_at_start(monkeypatch)
    assert main(["train", "--init-from", str(start), *TINY, "--out", str(tmp_path / "run")]) == 0
    model, file_config = load_model(start / "model.npz")
    assert seen.keys() == model.state_dict().keys()
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(seen[name], value, err_msg=name)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["init_from"] == str(start) and len(config["init_from_sha256"]) == 64
    assert (config["model"], config["dropout"]) == ("mlp", 0.1), "the file's architecture, as no --model was given"
    assert config["normalize_mean"] == file_config["normalize_mean"]

    seen.clear()  # the same run from fresh weights starts elsewhere (the check above can fail)
    assert main(["train", "--model", "mlp", "--dropout", "0.1", *TINY, "--out", str(tmp_path / "fresh")]) == 0
    weight = next(name for name in seen if name.endswith("weight"))
    assert not np.array_equal(seen[weight], model.state_dict()[weight])


def _mlp_file(path, num_classes):
    save_model(path, build_model("mlp", num_classes=num_classes, rng=np.random.default_rng(0)),
               {"model": "mlp", "dtype": "float32", "num_classes": num_classes, "classes": None})
    return path


@pytest.mark.parametrize("args, words", [
    (["--model", "cnn"], "its model (mlp) is not the run's: layers Flatten"),
    (["--dtype", "float64"], "dtype float32 does not fit the model's float64"),
    (["--dropout", "0"], "is not the run's"),
])
def test_another_architecture_is_refused_before_anything_is_written(start, tmp_path, capsys, args, words):
    assert main(["train", "--init-from", str(start / "model.npz"), *args, *TINY, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("npconv: error: --init-from ") and words in err and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("target, words", [
    ("checkpoint", "a checkpoint, not a model file"),
    ("missing", "no such file"),
    ("damaged", "not an npz model file"),
    ("five-classes", "the model has 5 classes, the dataset mnist 10"),
])
def test_a_file_that_cannot_start_a_run_is_one_line_and_status_2(start, tmp_path, capsys, target, words):
    paths = {"checkpoint": start / "checkpoint.npz", "missing": tmp_path / "missing.npz",
             "damaged": tmp_path / "damaged.npz", "five-classes": tmp_path / "five.npz"}
    (tmp_path / "damaged.npz").write_bytes((start / "model.npz").read_bytes()[:500])
    _mlp_file(tmp_path / "five.npz", 5)
    for model in ([], ["--model", "mlp"]):  # the architecture taken from the file, or given
        assert main(["train", "--init-from", str(paths[target]), *model, *TINY, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, err
        assert not (tmp_path / "x").exists()


def test_run_keys_keep_their_value_at_the_default_and_change_with_a_file():
    config = make_config({"model": "mlp"})
    assert "init_from" not in config.canonical()
    started = make_config({"model": "mlp", "init_from": "start/model.npz"})
    assert run_key(started, "d" * 64) != run_key(config, "d" * 64)
    assert TrainConfig.from_dict({k: v for k, v in vars(config).items() if k != "init_from"}, "x").init_from is None
