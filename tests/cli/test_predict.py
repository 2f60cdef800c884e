"""``npconv predict`` and ``npconv.classify`` on real image files: canvases, transparency, folders, formats."""

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

import npconv
from npconv.cli import main
from npconv.cli.train import format_table
from npconv.data import load_dataset
from npconv.inference import LOW_CONFIDENCE, Classifier, Prediction, image_files

SMALL = ["--train-subset", "2000", "--epochs", "2", "--batch-size", "50", "--quiet"]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "cnn"
    assert main(["train", *SMALL, "--out", str(out)]) == 0
    return str(out / "model.npz")


@pytest.fixture(scope="module")
def canvases(tmp_path_factory):
    """Real MNIST test digits 0-3, each enlarged and pasted off-centre on the canvases people make."""
    folder = tmp_path_factory.mktemp("canvases")
    mnist = load_dataset("mnist")
    labels = {}
    for i in range(4):
        big = Image.fromarray(mnist.test_images[i]).resize((84, 84), Image.Resampling.BICUBIC)
        paper = Image.new("L", (300, 260), 255)
        paper.paste(Image.eval(big, lambda v: 255 - v), (200, 30))  # a dark digit near a corner of white paper
        paper.save(folder / f"{i}-white.png")
        paper.save(folder / f"{i}-photo.jpg", quality=75)
        for shade, name in ((20, "dark"), (235, "light")):  # drawn on nothing: only the alpha channel is the ink
            layer = Image.new("RGBA", (320, 320), (shade, shade, shade, 0))
            layer.paste(Image.new("RGBA", big.size, (shade, shade, shade, 255)), (15, 220), big)
            alpha = Image.new("L", (320, 320), 0)
            alpha.paste(big, (15, 220))
            layer.putalpha(alpha)  # the stroke's coverage is its opacity, as a drawing app exports it
            layer.save(folder / f"{i}-transparent-{name}.png")
        labels[i] = str(mnist.test_labels[i])
    (folder / "notes.txt").write_text("not an image")
    return folder, labels


def run_predict(capsys, *args):
    status = main(["predict", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_every_kind_of_canvas_gets_the_same_answer(model_file, canvases, capsys):
    folder, labels = canvases
    status, out, err = run_predict(capsys, model_file, str(folder), "--format", "json")
    assert status == 0 and err == "", err
    results = {p["image"].rsplit("/", 1)[1]: p for p in json.loads(out)}
    assert len(results) == 16, "a folder stands for its image files (not notes.txt)"
    for i in labels:
        kinds = [results[f"{i}-{kind}"] for kind in ("white.png", "photo.jpg", "transparent-dark.png",
                                                      "transparent-light.png")]
        probs = np.array([[k["probabilities"][c] for c in sorted(k["probabilities"])] for k in kinds])
        assert np.abs(probs - probs[0]).max() < 0.05, f"digit {i}: the canvases are read differently\n{probs}"
        assert len({k["class"] for k in kinds}) == 1
    for p in results.values():
        assert abs(sum(p["probabilities"].values()) - 1) < 1e-4
        assert p["not_sure"] == (p["probability"] < LOW_CONFIDENCE)
        assert p["class"] == max(p["probabilities"], key=p["probabilities"].get)
    correct = sum(results[f"{i}-white.png"]["class"] == label for i, label in labels.items())
    assert correct >= 3, "a model at ~95 % on MNIST reads these real digits"


def test_table_names_the_class_once_labels_the_top_k_and_fits_100_columns(model_file, canvases, capsys):
    folder, _ = canvases
    status, out, _ = run_predict(capsys, model_file, str(folder / "0-white.png"), str(folder / "1-photo.jpg"),
                                 "--top", "4")
    lines = out.splitlines()
    assert status == 0 and lines[0].split() == ["image", "class", "p", "next"], lines
    for line in lines[1:3]:
        path, label, p, *rest = line.split()
        assert len(rest) >= 6 and float(p) >= max(float(v) for v in rest[1:6:2]), line  # 3 more classes, labelled
    assert all(len(line) <= 100 for line in lines), lines


def test_csv_has_a_column_per_class(model_file, canvases, capsys):
    folder, _ = canvases
    status, out, _ = run_predict(capsys, model_file, str(folder / "*-white.png"), "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert status == 0 and len(rows) == 4, "a quoted pattern stands for the files it matches"
    assert list(rows[0]) == ["image", "class", "probability", "not_sure", *map(str, range(10))]
    for row in rows:
        assert float(row["probability"]) == float(row[row["class"]]) == max(float(row[str(k)]) for k in range(10))


def test_unreadable_images_are_one_line_each_and_the_rest_is_classified(model_file, canvases, tmp_path, capsys):
    folder, _ = canvases
    bad = tmp_path / "bad.png"
    bad.write_text("not a png")
    status, out, err = run_predict(capsys, model_file, str(folder / "0-white.png"), str(bad),
                                   str(tmp_path / "missing.png"), "--format", "json")
    assert status == 2, "a user error, as the README's table says"
    assert [line.split(": ")[2] for line in err.splitlines()] == [str(bad), str(tmp_path / "missing.png")], err
    assert [p["image"] for p in json.loads(out)] == [str(folder / "0-white.png")]


@pytest.mark.parametrize("arg, message", [("empty-folder", "a folder with no image files"),
                                          ("*.nothing", "no file matches this pattern")])
def test_a_folder_or_pattern_without_images_is_one_line(model_file, tmp_path, capsys, arg, message):
    (tmp_path / "empty-folder").mkdir()
    status, _, err = run_predict(capsys, model_file, str(tmp_path / arg))
    assert status == 2 and err.count("\n") == 1 and message in err, err


def test_format_table_flags_low_confidence_and_shortens_long_paths():
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]
    probs = np.full(10, 0.02)
    probs[[9, 7, 5]] = [0.4, 0.3, 0.14]
    sure = np.zeros(10)
    sure[1] = 1.0
    long_path = "photos/" + "a-very-long-folder-name/" * 5 + "shoe.jpg"
    predictions = [Prediction(long_path, 9, "Ankle boot", 0.4, dict(zip(classes, probs))),
                   Prediction("trousers.png", 1, "Trouser", 1.0, dict(zip(classes, sure)))]
    lines = format_table(predictions, classes, top=10).splitlines()
    assert all(len(line) <= 100 for line in lines), [len(line) for line in lines]
    assert lines[1].startswith("...") and "shoe.jpg" in lines[1] and lines[1].endswith("not sure"), lines[1]
    assert "Sneaker 0.3000" in lines[1] and not lines[2].endswith("not sure")
    assert lines[-1].startswith(f"not sure: the top probability is below {LOW_CONFIDENCE}")


def test_classify_in_one_call_from_the_package(model_file, canvases):
    folder, labels = canvases
    paths = [folder / f"{i}-white.png" for i in labels]
    predictions = npconv.classify(model_file, paths)
    assert [p.image for p in predictions] == [str(p) for p in paths]
    from_bytes = Classifier(model_file).classify([p.read_bytes() for p in paths])
    assert [p.image for p in from_bytes] == ["image 1", "image 2", "image 3", "image 4"]
    assert [p.label for p in from_bytes] == [p.label for p in predictions]
    assert from_bytes[0].top(2)[0] == (from_bytes[0].label, from_bytes[0].probability)


def test_image_files_expand_folders_and_patterns_in_order(canvases):
    folder, _ = canvases
    found = image_files([folder / "1-white.png", str(folder / "0-*.png"), folder / "1-white.png"])
    assert [p.rsplit("/", 1)[1] for p in found] == ["1-white.png", "0-transparent-dark.png",
                                                   "0-transparent-light.png", "0-white.png"]


def test_both_engines_predict_and_evaluate_the_same(model_file, canvases, capsys):
    """``--engine reference`` (the textbook layers alone) gives the fast engine's answers, up to rounding."""
    folder, _ = canvases
    answers = {}
    for engine in ("fast", "reference"):
        status, out, err = run_predict(capsys, model_file, str(folder), "--format", "json", "--engine", engine)
        assert status == 0 and err == "", err
        answers[engine] = json.loads(out)
    for fast, reference in zip(answers["fast"], answers["reference"]):
        assert fast["class"] == reference["class"], (fast, reference)
        assert fast["probability"] == pytest.approx(reference["probability"], abs=1e-5)
    assert main(["evaluate", model_file, "--engine", "reference"]) == 0
    reference_line = capsys.readouterr().out.splitlines()[0]
    assert main(["evaluate", model_file]) == 0
    assert capsys.readouterr().out.splitlines()[0] == reference_line, "the same loss and accuracy to 4 digits"


def test_predict_says_a_blank_image_has_no_ink_and_flags_a_speck(model_file, canvases, tmp_path, capsys):
    folder, _ = canvases
    Image.new("L", (64, 64), 255).save(tmp_path / "white.png")
    speck = Image.new("L", (64, 64), 255)
    speck.putpixel((40, 12), 0)
    speck.save(tmp_path / "speck.png")
    status, out, err = run_predict(capsys, model_file, str(tmp_path / "white.png"), str(tmp_path / "speck.png"),
                                   str(folder / "0-white.png"))
    assert status == 2 and out.count("\n") == 2 and "0-white.png" in out, out  # the digit is still classified
    assert err.splitlines() == [f"npconv: error: {tmp_path / 'white.png'}: no ink: the image is blank (one level "
                                "everywhere), nothing to classify",
                                f"npconv: error: {tmp_path / 'speck.png'}: too little ink to classify: a speck of "
                                "1x1 pixels (a drawing spans at least 4)"], err


def test_predict_and_evaluate_take_a_run_folder(model_file, canvases, capsys):
    import os

    run = os.path.dirname(model_file)
    folder, _ = canvases
    image = str(folder / "1-white.png")
    assert run_predict(capsys, model_file, image)[:2] == run_predict(capsys, run, image)[:2]
    assert main(["evaluate", run]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_a_checkpoint_or_an_unfinished_run_is_not_a_model_and_says_what_to_use(model_file, tmp_path, capsys):
    import os
    import shutil

    run = os.path.dirname(model_file)
    status, _, err = run_predict(capsys, os.path.join(run, "checkpoint.npz"), "x.png")
    assert status == 2 and "checkpoint.npz: a checkpoint, not a model file: use the model.npz" in err, err
    assert main(["evaluate", os.path.join(run, "checkpoint.npz")]) == 2
    assert "a checkpoint, not a model file" in capsys.readouterr().err
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run, unfinished, ignore=shutil.ignore_patterns("model.npz", "summary.json", ".lock"))
    assert main(["evaluate", str(unfinished)]) == 2
    assert capsys.readouterr().err == (f"npconv: error: {unfinished}: the run has no model.npz yet (it is written "
                                       f"when the run completes): finish it with npconv train --resume {unfinished}\n")
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "a folder without model.npz, not a run folder" in capsys.readouterr().err
