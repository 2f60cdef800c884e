"""``npconv export`` and ``npconv import`` as a user runs them: a PyTorch-trained network imported, evaluated,
predicted with and served; every bad input is exit status 2, one line, nothing written."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from npconv.cli import main
from npconv.data.images import preprocess
from npconv.onnx import importer
from npconv.text import WIDTH
from npconv.train.modelfile import save_model

from serve.webclient import on_paper, start_server, stop_server
from .cases import MEAN, STD, model_and_config, require, run_cli

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's legacy exporter, asked for


@pytest.fixture(scope="module")
def pytorch_trained(tmp_path_factory, mnist, torch):
    """A small ConvNet trained in PyTorch (one pass over 6,000 MNIST images), exported by torch.onnx.export,
    and imported by ``npconv import``: (net, FILE.onnx, FILE.npz)."""
    require("onnx"), require("onnxruntime")
    torch.manual_seed(0)
    tnn = torch.nn
    net = tnn.Sequential(tnn.Conv2d(1, 8, 3, padding=1), tnn.BatchNorm2d(8), tnn.ReLU(), tnn.MaxPool2d(2),
                         tnn.Conv2d(8, 16, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Flatten(),
                         tnn.Linear(16 * 7 * 7, 64), tnn.ReLU(), tnn.Dropout(0.2), tnn.Linear(64, 10))
    x = torch.from_numpy(((mnist.train_images[:6000].astype(np.float32) / 255 - MEAN) / STD)[:, None])
    y = torch.from_numpy(mnist.train_labels[:6000].astype(np.int64))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for start in range(0, 6000, 50):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x[start:start + 50]), y[start:start + 50]).backward()
        optimizer.step()
    net.eval()
    folder = tmp_path_factory.mktemp("pytorch")
    onnx_file, npz = folder / "digits.onnx", folder / "digits.npz"
    torch.onnx.export(net, torch.zeros(1, 1, 28, 28), str(onnx_file), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}})
    done = run_cli("import", onnx_file, "--out", npz, "--mean", MEAN, "--std", STD)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"wrote {npz}"
    assert "npconv: note: the file does not name its classes: taken as the digits 0-9" in done.stderr
    assert all(len(line) <= WIDTH for line in done.stderr.splitlines()), done.stderr
    return net, onnx_file, npz


def torch_probabilities(net, images):
    import torch

    x = torch.from_numpy(((images.astype(np.float32) / 255 - np.float32(MEAN)) / np.float32(STD))[:, None])
    with torch.no_grad():
        return torch.softmax(net(x), 1).numpy()


def test_an_imported_pytorch_model_evaluates_and_predicts(pytorch_trained, mnist, tmp_path):
    net, _, npz = pytorch_trained
    done = run_cli("evaluate", npz)
    assert done.returncode == 0, done.stderr
    accuracy = float(done.stdout.split("accuracy")[1].split("%")[0].strip(" :")) / 100
    expected = (torch_probabilities(net, mnist.test_images).argmax(1) == mnist.test_labels).mean()
    assert accuracy == pytest.approx(expected, abs=1e-4), done.stdout
    assert accuracy > 0.85, "6,000 images once through give about 93 %"
    Image.fromarray(mnist.test_images[0]).save(tmp_path / "digit.png")
    done = run_cli("predict", npz, tmp_path / "digit.png", "--format", "json")
    assert done.returncode == 0, done.stderr
    (answer,) = json.loads(done.stdout)
    image = preprocess(str(tmp_path / "digit.png"))
    np.testing.assert_allclose(list(answer["probabilities"].values()), torch_probabilities(net, image[None])[0],
                               rtol=1e-5, atol=1e-6)


def test_an_imported_pytorch_model_is_the_start_of_training(pytorch_trained, tmp_path, capsys):
    _, _, npz = pytorch_trained
    run = tmp_path / "run"
    assert main(["train", "--init-from", str(npz), "--train-subset", "200", "--batch-size", "50", "--epochs", "1",
                 "--lr", "0.005", "--quiet", "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "digits.toml" and config["init_from"] == str(npz), "the imported architecture"
    assert [layer["type"] for layer in config["model_layers"]][:2] == ["conv2d", "relu"]
    assert (config["normalize_mean"], config["normalize_std"]) == (MEAN, STD), "inputs scaled as imported"
    # From fresh weights 200 images once through give about 16 %; from PyTorch's, it keeps its about 93 %.
    assert json.loads((run / "summary.json").read_text())["test_acc"] > 0.85
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0 and "accuracy" in capsys.readouterr().out


def test_npconv_serve_serves_an_imported_pytorch_model(pytorch_trained, mnist):
    require("starlette")
    net, _, npz = pytorch_trained
    proc, client = start_server([str(npz)])
    try:
        runs = client.json("/api/runs")["runs"]
        (run,) = [r for r in runs if r["name"].endswith("digits.npz")]
        assert run["kind"] == "model" and run["has_model"] and run["status"] == "completed"
        detail = client.json(f"/api/runs/{run['id']}")  # the Model view: PyTorch's layers, npconv's names
        assert [layer["type"] for layer in detail["architecture"]] == [
            "Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d", "Flatten", "Linear", "ReLU", "Linear"]
        assert np.array(detail["filters"]["weights"]).shape == (8, 1, 3, 3)  # PyTorch's conv, its batch norm folded in
        for i in range(3):
            image = on_paper(mnist.test_images[i])
            status, _, body = client.predict(image, f"?run={run['id']}")
            assert status == 200, body
            answer = json.loads(body)
            expected = torch_probabilities(net, preprocess(image)[None])[0]
            np.testing.assert_allclose(answer["probabilities"], expected, rtol=1e-5, atol=1e-6)
            assert answer["label"] == str(int(expected.argmax()))
    finally:
        stop_server(proc)


def test_export_from_a_run_folder_and_import_back(tmp_path, onnx):
    model, config = model_and_config("cnn-bn")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": "cnn-bn"}))
    save_model(run / "model.npz", model, config)
    done = run_cli("export", run, "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, f"wrote {tmp_path / 'm.onnx'}", "")
    done = run_cli("import", tmp_path / "m.onnx", "--out", tmp_path / "back.npz")
    assert (done.returncode, done.stderr) == (0, ""), "npconv's own graph names its classes and dataset"
    assert (tmp_path / "back.npz").is_file()


def hand_written(onnx, path, nodes, input_shape=("N", 1, 28, 28), initializers=None):
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(nodes, "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
                              [numpy_helper.from_array(v, k) for k, v in (initializers or {}).items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    """name -> (arguments of npconv, what the one line must say): each must fail with exit status 2."""
    onnx = require("onnx")
    from onnx import helper

    folder = tmp_path_factory.mktemp("bad")
    model, config = model_and_config("cnn")
    save_model(folder / "good.npz", model, config)
    assert main(["export", str(folder / "good.npz"), "--out", str(folder / "good.onnx")]) == 0
    good = (folder / "good.onnx").read_bytes()
    (folder / "text.onnx").write_text("this is not a model\n")
    (folder / "truncated.onnx").write_bytes(good[: len(good) // 2])
    w = np.zeros((784, 10), np.float32)
    node = helper.make_node
    flat = node("Flatten", ["x"], ["f"], name="flat")
    hand_written(onnx, folder / "softmax.onnx", [flat, node("MatMul", ["f", "w"], ["m"], name="fc"),
                                                 node("Softmax", ["m"], ["y"], name="probs")], initializers={"w": w})
    hand_written(onnx, folder / "branch.onnx", [
        flat, node("Relu", ["f"], ["a"], name="left"), node("Sigmoid", ["f"], ["b"], name="right"),
        node("Add", ["a", "b"], ["s"], name="join"), node("MatMul", ["s", "w"], ["y"], name="fc")],
        initializers={"w": w})
    hand_written(onnx, folder / "colour.onnx", [flat, node("MatMul", ["f", "w"], ["y"], name="fc")],
                 input_shape=("N", 3, 32, 32), initializers={"w": np.zeros((3072, 10), np.float32)})
    damaged = bytearray((folder / "good.npz").read_bytes())
    damaged[len(damaged) // 2:] = b"\0" * (len(damaged) - len(damaged) // 2)
    (folder / "damaged.npz").write_bytes(bytes(damaged))
    run = folder / "unfinished-run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    out = folder / "out"
    out.mkdir()
    npz, onnx_out = str(out / "m.npz"), str(out / "m.onnx")
    return out, {
        "not ONNX": (["import", folder / "text.onnx", "--out", npz], "text.onnx: not an ONNX file"),
        "truncated": (["import", folder / "truncated.onnx", "--out", npz],
                      "truncated.onnx: not an ONNX file, or a damaged or truncated one"),
        "missing": (["import", folder / "nope.onnx", "--out", npz], "no such file"),
        "unsupported op": (["import", folder / "softmax.onnx", "--out", npz],
                           "node 'probs' (Softmax): npconv has no layer"),
        "branch": (["import", folder / "branch.onnx", "--out", npz], "a branch"),
        "not an image batch": (["import", folder / "colour.onnx", "--out", npz],
                               "(N, 3, 32, 32), not an image batch"),
        "mean given twice": (["import", folder / "good.onnx", "--out", npz, "--mean", "0.5"], "leave out --mean"),
        "damaged model.npz": (["export", folder / "damaged.npz", "--out", onnx_out],
                              "damaged or not an npz model file"),
        "run without a model": (["export", run, "--out", onnx_out], "has no model.npz"),
        "no such folder": (["export", folder / "good.npz", "--out", folder / "nowhere" / "m.onnx"], "does not exist"),
    }


CASES = ["not ONNX", "truncated", "missing", "unsupported op", "branch", "not an image batch", "mean given twice",
         "damaged model.npz", "run without a model", "no such folder"]
#: The cases also run as a user runs them, in a process of their own (the others call the same main() in this one).
IN_A_PROCESS = ("not ONNX", "unsupported op", "damaged model.npz")


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_nothing_written(case, bad_inputs, capsys):
    out, cases = bad_inputs
    arguments, says = cases[case]
    if case in IN_A_PROCESS:
        done = run_cli(*arguments)
        status, stdout, stderr = done.returncode, done.stdout, done.stderr
    else:
        status = main([str(a) for a in arguments])
        stdout, stderr = capsys.readouterr()
    assert status == 2, (status, stderr)
    assert stderr.count("\n") == 1 and stderr.startswith("npconv: error: "), stderr
    assert says in stderr and "Traceback" not in stderr, stderr
    assert stdout == ""
    assert os.listdir(out) == [], "nothing written, not even a temporary file"


def test_a_file_over_the_size_cap_is_refused_before_it_is_read(bad_inputs, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(importer, "MAX_ONNX_BYTES", 1000)
    big = tmp_path / "big.onnx"
    big.write_bytes(b"\0" * 1001)
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    assert main(["import", str(big), "--out", str(tmp_path / "m.npz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1001 bytes, more than the 1000" in err, err
    assert str(big) not in map(str, opened), "refused from its size, before reading it"
    assert not (tmp_path / "m.npz").exists()


def test_without_onnx_the_error_names_the_extra(tmp_path):
    model, config = model_and_config("mlp")
    save_model(tmp_path / "m.npz", model, config)
    code = ("import sys; sys.modules['onnx'] = None; from npconv.cli import main; "  # None: 'import onnx' fails
            f"sys.exit(main(['export', {str(tmp_path / 'm.npz')!r}, '--out', {str(tmp_path / 'm.onnx')!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert 'pip install "npconv[onnx]"' in done.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_the_help_and_the_docs_name_every_operation_the_import_takes(capsys):
    with pytest.raises(SystemExit):
        main(["import", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    docs = open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "onnx.md"), encoding="utf-8").read()
    for op in importer.SUPPORTED_OPS:
        assert f"`{op}`" in docs, f"docs/onnx.md does not list {op}"
        assert op in help_text, f"npconv import --help does not name {op}"
