"""The ``npconv`` command end to end, on a small subset of the real MNIST."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import small_bn_net, write_architecture_file
from dependencies import require_fashion_mnist

from npconv.cli import main
from npconv.data import load_dataset
from npconv.data.images import preprocess
from npconv.train import TrainConfig, run_training
from npconv.train.runfolder import HISTORY_COLUMNS
from npconv.train.modelfile import load_model

SMALL = ["--train-subset", "300", "--epochs", "2", "--batch-size", "50", "--quiet"]


def run_cli(*args):
    """Run ``python -m npconv`` in a subprocess, as a user would."""
    return subprocess.run([sys.executable, "-m", "npconv", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "cnn"
    assert main(["train", *SMALL, "--seed", "3", "--out", str(out)]) == 0
    return out


def read_history(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_train_writes_the_run_folder(trained_run):
    for name in ("config.json", "history.csv", "summary.json", "model.npz", "curves.png"):
        assert (trained_run / name).is_file(), f"{name} missing from the run folder"
    rows = read_history(trained_run / "history.csv")
    assert list(rows[0]) == HISTORY_COLUMNS
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for r in rows:
        assert 0 <= float(r["train_acc"]) <= 1 and 0 <= float(r["test_acc"]) <= 1, r
    summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["test_acc"] == float(rows[-1]["test_acc"])
    assert summary["test_acc"] > 0.5, "300 images, 2 epochs should already beat chance by far"
    config = json.loads((trained_run / "config.json").read_text())
    assert config["seed"] == 3 and config["train_subset"] == 300 and config["model"] == "cnn"
    with Image.open(trained_run / "curves.png") as img:
        assert img.format == "PNG" and img.width > 300


def test_model_file_rebuilds_the_model(trained_run):
    model, config = load_model(trained_run / "model.npz")
    assert config["model"] == "cnn" and config["num_classes"] == 10
    with np.load(trained_run / "model.npz", allow_pickle=False) as npz:
        assert "0.weight" in npz.files and npz["0.weight"].shape == (8, 1, 3, 3)
        np.testing.assert_array_equal(model.state_dict()["7.weight"], npz["7.weight"])


def test_evaluate_reports_the_same_accuracy(trained_run, capsys):
    assert main(["evaluate", str(trained_run / "model.npz")]) == 0
    out = capsys.readouterr().out
    summary = json.loads((trained_run / "summary.json").read_text())
    assert f"accuracy {100 * summary['test_acc']:.2f}%" in out, out
    assert "confusion matrix" in out
    matrix = [line.split()[1:] for line in out.splitlines()[3:13]]
    assert sum(int(v) for row in matrix for v in row) == 10000


def test_predict_classifies_light_and_dark_images(trained_run, mnist, tmp_path, capsys):
    # A real test digit, saved white-on-black (as MNIST) and black-on-white (as drawn on paper).
    digit = mnist.test_images[0]
    Image.fromarray(digit).save(tmp_path / "dark.png")
    Image.fromarray(255 - digit).resize((120, 120)).save(tmp_path / "light.jpg")
    model = str(trained_run / "model.npz")
    assert main(["predict", model, str(tmp_path / "dark.png"), str(tmp_path / "light.jpg"), "--format", "json"]) == 0
    predictions = json.loads(capsys.readouterr().out)
    assert len(predictions) == 2
    # Both are made into the same network input (the 2-epoch model here is too weak to compare its guesses).
    dark, light = (preprocess(tmp_path / name).astype(float) for name in ("dark.png", "light.jpg"))
    assert np.corrcoef(dark.ravel(), light.ravel())[0, 1] > 0.95, "inverting the colours changes nothing"
    probs = predictions[0]["probabilities"]
    assert list(probs) == [str(k) for k in range(10)] and abs(sum(probs.values()) - 1) < 1e-3


def test_same_seed_same_history_and_weights(tmp_path):
    # Two epochs (so two shuffles) with dropout: every random stream is exercised.
    config = TrainConfig(model="mlp", train_subset=200, epochs=2, batch_size=40, dropout=0.2, seed=7)
    run_training(config, tmp_path / "a", progress=False, log=lambda *_: None)
    run_training(config, tmp_path / "b", progress=False, log=lambda *_: None)
    a, b = read_history(tmp_path / "a" / "history.csv"), read_history(tmp_path / "b" / "history.csv")
    for row in a + b:
        row.pop("seconds")  # wall-clock time: the one column that may differ
    assert a == b
    wa, wb = np.load(tmp_path / "a" / "model.npz"), np.load(tmp_path / "b" / "model.npz")
    for name in wa.files:
        np.testing.assert_array_equal(wa[name], wb[name], err_msg=name)


def test_different_seeds_differ(tmp_path):
    histories = []
    for seed in (1, 2):
        run_training(TrainConfig(model="mlp", train_subset=200, epochs=1, batch_size=40, seed=seed), tmp_path / str(seed),
                     progress=False, log=lambda *_: None)
        histories.append(read_history(tmp_path / str(seed) / "history.csv")[0]["train_loss"])
    assert histories[0] != histories[1]


def test_mlp_with_adam_and_validation_split(tmp_path):
    out = tmp_path / "mlp"
    code = main(["train", "--model", "mlp", "--optimizer", "adam", "--lr", "0.001", "--val-split", "0.2",
                 "--train-subset", "500", "--epochs", "1", "--quiet", "--out", str(out)])
    assert code == 0
    (row,) = read_history(out / "history.csv")
    assert list(row) == HISTORY_COLUMNS + ["val_loss", "val_acc"]
    assert json.loads((out / "config.json").read_text())["train_size"] == 400


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lr", "0"], "--lr must be a finite number > 0"),
        (["--lr", "nan"], "--lr must be a finite number > 0"),
        (["--lr", "abc"], "invalid float value"),
        (["--momentum", "1"], "--momentum must be in [0, 1)"),
        (["--weight-decay", "-1"], "--weight-decay must be a finite number >= 0"),
        (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
        (["--epochs", "0"], "--epochs must be an integer >= 1"),
        (["--dropout", "1"], "--dropout must be in [0, 1)"),
        (["--model", "resnet"], "--model must be one of cnn, mlp, lenet5, cnn-bn, or a .toml file, got 'resnet'"),
        (["--dataset", "cifar"], "invalid choice"),
        (["--model", "mlp", "--dropout", "0.2", "--dropout-at", "before-conv"], "before-fc for the mlp model"),
        (["--data-dir", "/nonexistent/folder"], "no such directory"),
        (["--train-subset", "70000"], "--train-subset must be at most the 60000"),
        (["--train-subset", "0"], "--train-subset must be an integer >= 1"),
        (["--lr", "inf"], "--lr must be a finite number > 0"),
        (["--seed", "-1"], "--seed must be an integer >= 0"),
        (["--epochs", "1.5"], "invalid int value"),
        (["--optimizer", "rmsprop"], "invalid choice"),
        (["--val-split", "1"], "--val-split must be in [0, 1)"),
        (["--train-subset", "100", "--val-split", "0.001"], "gives 0 validation images"),
        (["--train-subset", "2", "--val-split", "0.9"], "gives 2 validation images"),
        (["--data-dir", __file__], "not a directory"),
    ],
)
def test_bad_options_give_one_line_and_status_2(tmp_path, args, message):
    out = tmp_path / "out"
    result = run_cli("train", *args, "--out", str(out), "--quiet")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists(), "nothing may be written for a bad option"


def test_out_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("x")
    result = run_cli("train", *SMALL, "--out", str(target))
    assert result.returncode == 2 and "is not a directory" in result.stderr
    assert target.read_text() == "x"


@pytest.mark.parametrize("content", [b"", b"not a zip at all", b"PK\x03\x04truncated"])
def test_bad_model_files_give_status_2(tmp_path, content):
    path = tmp_path / "model.npz"
    path.write_bytes(content)
    for command in (["evaluate", str(path)], ["predict", str(path), str(path)]):
        result = run_cli(*command)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and str(path) in result.stderr and "Traceback" not in result.stderr


def test_predict_rejects_non_images(trained_run, tmp_path):
    empty, text = tmp_path / "empty.png", tmp_path / "text.png"
    empty.write_bytes(b"")
    text.write_text("hello")
    for path, message in ((empty, "empty file"), (text, "not a readable image"), (tmp_path / "missing.png", "no such file")):
        result = run_cli("predict", str(trained_run / "model.npz"), str(path))
        assert result.returncode == 2 and message in result.stderr, result.stderr


def test_console_script_and_module_agree():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("npconv ")


def _png_header(width, height):
    """A PNG that claims ``width`` x ``height`` pixels (and holds almost nothing)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("width, height", [(100_000, 100_000), (10_000, 10_000), (8_000, 8_000), (1, 10**9)])
def test_predict_refuses_absurd_image_sizes_before_decoding(trained_run, tmp_path, capsys, width, height):
    # 10^10 pixels: PIL's DecompressionBombError; 10^8: its DecompressionBombWarning; 6.4e7: npconv's own cap.
    path = tmp_path / "huge.png"
    path.write_bytes(_png_header(width, height))
    assert main(["predict", str(trained_run / "model.npz"), str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "too large" in err and str(path) in err, err


def test_predict_rejects_a_truncated_image(trained_run, tmp_path, capsys):
    path = tmp_path / "cut.png"
    path.write_bytes(_png_header(300, 300))  # claims 90000 pixels, holds 16 bytes
    assert main(["predict", str(trained_run / "model.npz"), str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a readable image" in err, err


def test_a_model_file_trains_and_its_run_evaluates_and_predicts_without_it(tmp_path, mnist, capsys):
    net = tmp_path / "net.toml"
    write_architecture_file(net, small_bn_net())
    out = tmp_path / "run"
    assert main(["train", "--model", str(net), *SMALL, "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == str(net) and config["model_layers"][1]["type"] == "batchnorm2d"
    net.unlink()  # the run folder and model.npz record the architecture itself
    capsys.readouterr()
    assert main(["evaluate", str(out / "model.npz")]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert f"accuracy {100 * summary['test_acc']:.2f}%" in capsys.readouterr().out
    Image.fromarray(mnist.test_images[0]).save(tmp_path / "digit.png")
    assert main(["predict", str(out / "model.npz"), str(tmp_path / "digit.png")]) == 0


def test_a_bad_architecture_file_gives_one_line_naming_the_file_and_the_layer(tmp_path):
    net = tmp_path / "net.toml"
    write_architecture_file(net, [{**small_bn_net()[0], "kernel_size": 31}, *small_bn_net()[1:]])
    result = run_cli("train", "--model", str(net), "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr == (f"npconv: error: --model {net}: layer 0 (conv2d): on its 1x28x28 input: height: input "
                             "size 28 (padded 30) is smaller than the kernel size 31\n")
    assert not (tmp_path / "run").exists()


def test_evaluate_on_another_dataset_says_so_in_one_line(trained_run, capsys):
    require_fashion_mnist()
    assert main(["evaluate", str(trained_run / "model.npz"), "--dataset", "fashion-mnist"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ("npconv: warning: the model was trained on mnist, not fashion-mnist: its accuracy here "
                            "means little\n"), captured.err
    assert "fashion-mnist test set: 10000 images" in captured.out
    assert main(["evaluate", str(trained_run / "model.npz")]) == 0 and capsys.readouterr().err == ""


def test_model_file_records_its_data_and_a_copy_with_other_data_is_noticed(trained_run):
    from types import SimpleNamespace

    from npconv.inference import data_mismatch

    _, config = load_model(trained_run / "model.npz")
    mnist = load_dataset("mnist")
    assert config["dataset"] == "mnist" and config["dataset_sha256"] == mnist.sha256
    assert data_mismatch(config, mnist) is None
    other = SimpleNamespace(name="mnist", sha256="0" * 64)  # e.g. --data-dir with edited IDX files
    assert "trained on other mnist (SHA-256 " in data_mismatch(config, other)


def test_a_signal_after_the_run_completed_exits_0_as_the_summary_says(tmp_path, capsys, monkeypatch):
    import os
    import signal

    from npconv.train.runfolder import RunFolder

    real = RunFolder.write_curves

    def curves_then_ctrl_c(self, history, title):  # the last file of a completed run, then Ctrl-C
        real(self, history, title)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(RunFolder, "write_curves", curves_then_ctrl_c)
    out = tmp_path / "run"
    args = ["train", "--model", "mlp", "--train-subset", "200", "--epochs", "1", "--quiet", "--out", str(out)]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert captured.err == "npconv: SIGINT arrived after the run completed; nothing was lost\n", captured.err
    assert captured.out.splitlines()[-1].startswith("final test accuracy ")
    assert json.loads((out / "summary.json").read_text())["status"] == "completed" and (out / "model.npz").exists()
