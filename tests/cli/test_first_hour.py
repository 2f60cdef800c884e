"""What a new user meets in the first hour: help texts, typos, empty folders, absurd sizes (issue 24's list).

Other items of that list are tested beside the code they touch: blank images and specks (tests/data/test_images.py,
tests/cli/test_predict.py), run folders for predict and evaluate (tests/cli/test_predict.py), compare's labels and
model files (tests/experiments/test_compare.py), Ctrl-C on a sweep (tests/experiments/test_sweep.py), resuming a
finished run (tests/train/test_checkpoint.py), layer numbers (tests/models/test_spec.py and below).
"""

import re

import pytest

from npconv.cli import main
from npconv.cli.experiments import format_runs
from npconv.experiments.runlist import RunEntry
from npconv.text import shorten_middle


def run(capsys, *args):
    status = main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize("args, hint", [
    (["train", "--learning-rate", "0.1"], "did you mean --lr?"),
    (["train", "--batchsize", "64"], "did you mean --batch-size?"),
    (["sweep", "--learning-rate", "0.1,0.2"], "did you mean --lr?"),
    (["predict", "model.npz", "x.png", "--tpo", "3"], "did you mean --top?"),
    (["train", "--frobnicate"], None),
])
def test_an_unknown_option_suggests_the_closest(capsys, args, hint):
    with pytest.raises(SystemExit) as stopped:
        main(args)
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and err.count("\n") == 1 and "unrecognized arguments" in err, err
    assert (hint in err) if hint else ("did you mean" not in err), err


@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "sweep", "study", "compare", "runs", "serve"])
def test_help_speaks_the_users_words_not_pythons(capsys, command):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere
    for internal in ("zero_classifier", "stable_softmax", "normalize on", "None", "npconv/study.py"):
        assert internal not in text, f"{command} --help says {internal!r}"


def test_train_help_says_what_resume_may_change(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "only --epochs and --device may change" in " ".join(capsys.readouterr().out.split())


def test_runs_without_a_runs_folder_says_what_to_do(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, out, err = run(capsys, "runs")
    assert status == 2 and out == "", out
    assert err == ("npconv: error: runs: no such directory; npconv train writes its runs into runs/ (train one "
                   "first), or name a folder of runs: npconv runs sweep/\n"), err


def test_runs_keeps_both_ends_of_a_long_path():
    assert shorten_middle("abcdefghij", 10) == "abcdefghij" and shorten_middle("abcdefghijk", 9) == "abc...ijk"
    paths = [f"/home/student/experiments/lr-sweep-{k}/runs/cnn-575893547cfe{k}" for k in "ab"]
    entries = [RunEntry(p, "completed", "cnn", "mnist", 10, 10, 0.99, 0.0) for p in paths]
    lines = format_runs(entries)
    assert all(len(line) <= 100 for line in lines), lines
    shown = [line.split()[-1] for line in lines[1:]]
    assert shown[0] != shown[1] and all(s.endswith(p[-8:]) for s, p in zip(shown, paths)), shown
    assert all(s.startswith("/home/") for s in shown), shown  # the start says where: which sweep


def test_a_batch_larger_than_the_training_set_is_refused_up_front(tmp_path, capsys):
    out = tmp_path / "run"
    status, _, err = run(capsys, "train", "--batch-size", "100000", "--train-subset", "500", "--out", str(out))
    assert status == 2 and not out.exists(), err
    assert err == ("npconv: error: --batch-size 100000 is more than the 500 images trained on, so every epoch would "
                   "be a single step; choose at most 500\n"), err


def test_layers_are_counted_from_0_in_model_files_as_in_health_and_the_api(tmp_path, capsys):
    net = tmp_path / "net.toml"
    net.write_text("[[layer]]\ntype = 'conv2d'\nout_channels = 4\nkernel_size = 3\n\n[[layer]]\ntype = 'relu'\n\n"
                   "[[layer]]\ntype = 'linear'\nout_features = 10\n")
    status, _, err = run(capsys, "train", "--model", str(net), "--out", str(tmp_path / "r"))
    assert status == 2 and re.search(r"layer 2 \(linear\): needs flat input", err), err
    net.write_text("[[layer]]\ntype = 'flatten'\n\n[[layer]]\nout_features = 10\n")
    status, _, err = run(capsys, "train", "--model", str(net), "--out", str(tmp_path / "r"))
    assert status == 2 and "layer 1: has no type; give one of: conv2d" in err and "None" not in err, err


def test_the_study_file_points_to_files_that_exist(capsys):
    from pathlib import Path

    import npconv

    assert main(["study", "--show-config"]) == 0
    text = capsys.readouterr().out
    named = re.findall(r"npconv/[\w/]+\.py", text)
    root = Path(npconv.__file__).parent.parent
    assert named and all((root / path).is_file() for path in named), named
