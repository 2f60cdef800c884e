"""The settings that make npconv train as other from-scratch codes do (npconv/studies/collapse.toml sweeps them).

Each is checked on real MNIST runs against an equivalent npconv run, where the maths says they are the same
thing: a summed loss is the mean loss with a learning rate N times larger, an L2 term summed over the batch is
weight decay N times larger.
"""

import csv

import numpy as np
import pytest

from npconv.errors import SettingError
from npconv.inference import Classifier
from npconv.models.initialization import layers_with_weights
from npconv.train import TrainConfig, run_training
from npconv.train.run import _prepare
from npconv.train.settings import SETTINGS

QUIET = dict(progress=False, log=lambda *_: None)
TINY = dict(model="mlp", train_subset=500, epochs=2, batch_size=50, seed=3)


def history(folder):
    with open(folder / "history.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def assert_close_histories(a, b, rtol):
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        for key in ra:
            assert ra[key] == pytest.approx(rb[key], rel=rtol, abs=rtol), (key, ra, rb)


def test_every_new_setting_defaults_to_what_npconv_always_did():
    for name in ("init_std", "zero_classifier", "pixel_range", "loss_reduction", "weight_decay_reduction",
                 "stable_softmax"):
        spec = SETTINGS[name]
        assert not spec.keyed_at_default, f"{name} would change the key of every run made before it"
    assert TrainConfig().canonical() == {k: v for k, v in TrainConfig().canonical().items()
                                         if SETTINGS[k].keyed_at_default}


def test_a_summed_loss_is_the_mean_loss_with_a_learning_rate_n_times_larger(tmp_path):
    run_training(TrainConfig(**TINY, lr=0.002, weight_decay=0.0, loss_reduction="sum"), tmp_path / "sum", **QUIET)
    run_training(TrainConfig(**TINY, lr=0.1, weight_decay=0.0), tmp_path / "mean", **QUIET)
    # The history reports the loss per example either way, so the two runs' figures are the same numbers.
    assert_close_histories(history(tmp_path / "sum"), history(tmp_path / "mean"), rtol=1e-4)


def test_weight_decay_summed_over_the_batch_is_batch_size_times_stronger(tmp_path):
    run_training(TrainConfig(**TINY, weight_decay=0.002, weight_decay_reduction="sum"), tmp_path / "sum", **QUIET)
    run_training(TrainConfig(**TINY, weight_decay=0.1), tmp_path / "mean", **QUIET)
    assert_close_histories(history(tmp_path / "sum"), history(tmp_path / "mean"), rtol=1e-6)


def test_pixels_0_255_reach_the_network_as_they_are_and_the_model_file_keeps_that(tmp_path):
    config = TrainConfig(**TINY, normalize=False, pixel_range="0-255", lr=1e-5)  # pixels 255x larger: a tiny lr
    run = _prepare(config)
    assert run.full_config["normalize_std"] == pytest.approx(1 / 255) and run.full_config["normalize_mean"] is None
    assert run.x_test.max() == pytest.approx(255, rel=1e-6) and run.x_test.min() == 0
    run_training(config, tmp_path / "raw", **QUIET)
    classifier = Classifier(tmp_path / "raw" / "model.npz")
    assert classifier.inputs(np.full((1, 28, 28), 200, np.uint8)).max() == pytest.approx(200, rel=1e-6)


def test_pixels_0_255_with_standardization_is_refused():
    with pytest.raises(SettingError, match="pixel_range 0-255 needs normalize off"):
        TrainConfig(pixel_range="0-255").validate()


@pytest.mark.parametrize("std", [0.01, 0.1])
def test_gaussian_initial_weights_and_the_output_layer(std):
    layers = layers_with_weights(_prepare(TrainConfig(**TINY, init_std=std)).model)
    assert layers[0].weight.data.std() == pytest.approx(std, rel=0.05) and not layers[-1].weight.data.any()
    layers = layers_with_weights(_prepare(TrainConfig(**TINY, init_std=std, zero_classifier=False)).model)
    assert layers[-1].weight.data.std() == pytest.approx(std, rel=0.1)


def test_the_naive_softmax_is_the_training_loss_when_asked():
    assert _prepare(TrainConfig(**TINY)).loss_fn.stable
    assert not _prepare(TrainConfig(**TINY, stable_softmax=False)).loss_fn.stable


NEW = ("init_std", "zero_classifier", "pixel_range", "loss_reduction", "weight_decay_reduction", "stable_softmax")


def test_a_run_from_before_the_new_settings_resumes_as_it_would_have(tmp_path):
    """A run folder written before these settings existed (no such keys in config.json or the checkpoint)."""
    import json

    from npconv.errors import CheckpointError
    from npconv.io.npz import json_entry, parse_json_entry, read_npz, write_npz
    from npconv.train import resume_training

    def stop_after_epoch_1(line):
        if line.startswith("epoch 1/"):
            raise KeyboardInterrupt

    config = TrainConfig(**TINY)
    run_training(config, tmp_path / "whole", **QUIET)
    with pytest.raises(KeyboardInterrupt):
        run_training(config, tmp_path / "old", progress=False, log=stop_after_epoch_1)
    path = tmp_path / "old" / "config.json"
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k not in NEW}))
    checkpoint = tmp_path / "old" / "checkpoint.npz"
    arrays = read_npz(str(checkpoint), "checkpoint", CheckpointError)
    meta = parse_json_entry(arrays.pop("__checkpoint__"), "checkpoint", CheckpointError)
    meta["config"] = {k: v for k, v in meta["config"].items() if k not in NEW}
    write_npz(str(checkpoint), {**arrays, "__checkpoint__": json_entry(meta)})

    assert TrainConfig.from_dict(json.loads(path.read_text()), str(path)) == config
    assert resume_training(tmp_path / "old", **QUIET).status == "completed"
    assert history(tmp_path / "old") == history(tmp_path / "whole")
