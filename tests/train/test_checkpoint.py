"""Checkpoints, resume, divergence: nothing lost, and a resumed run is bit-identical to an uninterrupted one."""

import csv
import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import small_bn_net, write_architecture_file

from npconv.train.checkpoint import load_checkpoint, restore, save_checkpoint
from npconv.train.runfolder import CHECKPOINT_FILE
from npconv.cli import main
from npconv.errors import CheckpointError
from npconv.train.interrupt import Interrupted
from npconv.models import build_model
from npconv.optim import SGD, Adam
from npconv.train import TrainConfig, resume_training, run_training
from npconv.train.loop import EpochStats, divergence_threshold, exploded
from npconv.train.settings import make_config

QUIET = dict(progress=False, log=lambda *_: None)


def read_rows(path, drop=("seconds",)):
    """CSV rows without the wall-clock column."""
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(f)]


def assert_same_npz(a, b, skip=()):
    with np.load(a, allow_pickle=False) as za, np.load(b, allow_pickle=False) as zb:
        assert sorted(za.files) == sorted(zb.files)
        for name in za.files:
            if name not in skip:
                np.testing.assert_array_equal(za[name], zb[name], err_msg=f"{name} differs between {a} and {b}")


def assert_same_checkpoint(a, b):
    """The same arrays, and the same metadata but for the wall-clock seconds."""
    assert_same_npz(a, b, skip=("__checkpoint__",))
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    for c in (ca, cb):
        for h in c.history:
            h.seconds = None
    for field in ("epoch", "config", "history", "health", "advice", "rng"):
        assert getattr(ca, field) == getattr(cb, field), field


def assert_same_run(reference, resumed):
    """history.csv (but seconds), health.csv and model.npz are bit-identical."""
    assert read_rows(reference / "history.csv") == read_rows(resumed / "history.csv")
    assert (reference / "health.csv").read_text() == (resumed / "health.csv").read_text()
    assert_same_npz(reference / "model.npz", resumed / "model.npz")


def checkpoint_epoch(run_dir):
    try:
        return load_checkpoint(run_dir / CHECKPOINT_FILE).epoch
    except CheckpointError:  # not written yet (files are atomic: never half-written)
        return 0


def start_cli(*args):
    return subprocess.Popen([sys.executable, "-m", "npconv", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def interrupt_after_checkpoint(process, run_dir, after_epoch, signum, timeout=120):
    """Send ``signum`` to ``process`` once the checkpoint of an epoch > ``after_epoch`` is on disk."""
    deadline = time.monotonic() + timeout
    while checkpoint_epoch(run_dir) <= after_epoch:
        assert process.poll() is None, f"the run ended before it could be interrupted: {process.communicate()}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    process.send_signal(signum)
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


# 300 steps per epoch: long enough to interrupt a run in the middle, short enough for a test.
SIGNAL_RUN = ["train", "--model", "mlp", "--train-subset", "6000", "--batch-size", "20", "--epochs", "4",
              "--dropout", "0.2", "--seed", "5", "--quiet"]


def test_run_interrupted_by_sigterm_and_sigint_then_resumed_is_bit_identical(tmp_path):
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert subprocess.run([sys.executable, "-m", "npconv", *SIGNAL_RUN, "--out", str(reference)],
                          capture_output=True, timeout=300).returncode == 0

    # SIGTERM after the first checkpoint: status 143, the checkpoint kept, a hint how to resume.
    code, _, err = interrupt_after_checkpoint(start_cli(*SIGNAL_RUN, "--out", str(run)), run, 0, signal.SIGTERM)
    assert code == 143, err
    assert err.count("\n") == 1 and "interrupted by SIGTERM after epoch" in err and f"--resume {run}" in err, err
    first = checkpoint_epoch(run)
    assert 1 <= first < 4
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGTERM" and summary["epochs"] == first
    assert len(read_rows(run / "history.csv")) == first and not (run / "model.npz").exists()

    # Resume, and stop that with Ctrl-C (SIGINT) after one more epoch: status 130.
    code, _, err = interrupt_after_checkpoint(start_cli("train", "--resume", str(run), "--quiet"), run, first,
                                              signal.SIGINT)
    assert code == 130 and "interrupted by SIGINT" in err, err
    second = checkpoint_epoch(run)
    assert second > first

    if second < 4:  # (on a slow machine the last epoch may have finished before the signal)
        assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    assert_same_run(reference, run)
    assert_same_checkpoint(reference / CHECKPOINT_FILE, run / CHECKPOINT_FILE)


def _stop_at(epoch):
    """A log function that presses Ctrl-C right after ``epoch``'s line (its files are written by then)."""
    def log(line):
        if line.startswith(f"epoch {epoch}/"):
            raise KeyboardInterrupt
    return log


def test_resume_in_process_with_adam_and_validation(tmp_path):
    config = TrainConfig(model="mlp", optimizer="adam", lr=0.002, train_subset=400, val_split=0.25, epochs=3,
                         batch_size=40, dropout=0.1, seed=11)
    run_training(config, tmp_path / "reference", **QUIET)
    with pytest.raises(Interrupted) as info:
        run_training(config, tmp_path / "run", progress=False, log=_stop_at(2))
    assert info.value.epoch == 2 and info.value.exit_status == 130
    summary = resume_training(tmp_path / "run", **QUIET)
    assert summary.status == "completed" and summary.epochs == 3 and summary.val_acc is not None
    assert_same_run(tmp_path / "reference", tmp_path / "run")


def test_resume_with_more_epochs_extends_the_run(tmp_path):
    config = TrainConfig(model="mlp", train_subset=200, epochs=2, batch_size=50, lr_schedule="constant")
    run_training(config, tmp_path / "run", **QUIET)
    assert main(["train", "--resume", str(tmp_path / "run"), "--epochs", "3", "--quiet"]) == 0
    assert [r["epoch"] for r in read_rows(tmp_path / "run" / "history.csv")] == ["1", "2", "3"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["epochs"] == 3
    # With a constant learning rate, 2 + 1 epochs are 3 epochs.
    run_training(TrainConfig(**{**config.__dict__, "epochs": 3}), tmp_path / "three", **QUIET)
    assert_same_run(tmp_path / "three", tmp_path / "run")


@pytest.mark.parametrize("batch_size", [30, 60], ids=["one-chunk", "two-chunks"])
def test_an_architecture_file_network_with_bn_and_shifts_resumes_bit_identical_without_its_file(tmp_path, batch_size):
    """Running statistics and the data generator's shift draws are restored; the .toml is not needed again.
    A batch of 60 is computed in two chunks whose batch norms pool their statistics (DataParallel)."""
    net = tmp_path / "bn-net.toml"
    write_architecture_file(net, small_bn_net(hidden=32))
    settings = {"model": str(net), "train_subset": 300, "epochs": 3, "batch_size": batch_size, "augment_shift": 2,
                "seed": 4}
    run_training(make_config(settings), tmp_path / "reference", **QUIET)
    with pytest.raises(Interrupted):
        run_training(make_config(settings), tmp_path / "run", progress=False, log=_stop_at(1))
    write_architecture_file(net, small_bn_net(hidden=8))  # changed: the run must not read it again
    assert resume_training(tmp_path / "run", **QUIET).status == "completed"
    assert_same_run(tmp_path / "reference", tmp_path / "run")
    assert_same_checkpoint(tmp_path / "reference" / CHECKPOINT_FILE, tmp_path / "run" / CHECKPOINT_FILE)
    with np.load(tmp_path / "run" / "model.npz") as z:
        assert int(z["1.num_batches_tracked"]) == 3 * 300 // batch_size and z["6.running_var"].shape == (32,)
    net.unlink()
    assert main(["evaluate", str(tmp_path / "run" / "model.npz")]) == 0


# --- the checkpoint file itself ----------------------------------------------------------------


def _model_and_optimizer(optimizer="sgd"):
    model = build_model("mlp", dropout=0.3, rng=np.random.default_rng(1))
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9) if optimizer == "sgd" else Adam(model.parameters())
    for i, p in enumerate(model.parameters()):  # one step, so the optimizer has state
        p.grad[...] = 0.01 * (i + 1)
    opt.step()
    return model, opt


def _save(path, model, opt, rngs, **changes):
    history = [EpochStats(1, 2.0, 0.5, 1.5, 0.6, 0.1)]
    kwargs = dict(epoch=1, config={"seed": 1}, history=history, rngs=rngs, health=[], advice=[])
    kwargs.update(changes)
    save_checkpoint(path, model, opt, **kwargs)
    return path


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_checkpoint_round_trip_restores_everything(tmp_path, optimizer):
    model, opt = _model_and_optimizer(optimizer)
    rng = np.random.default_rng(3)
    rng.random(5)
    path = _save(tmp_path / "c.npz", model, opt, {"data": rng})
    expected_next = rng.random(3)

    fresh_model, fresh_opt = build_model("mlp", dropout=0.3, rng=np.random.default_rng(9)), None
    fresh_opt = (SGD(fresh_model.parameters(), lr=0.1, momentum=0.9) if optimizer == "sgd"
                 else Adam(fresh_model.parameters()))
    fresh_rng = np.random.default_rng(0)
    checkpoint = load_checkpoint(path)
    restore(checkpoint, fresh_model, fresh_opt, {"data": fresh_rng})
    assert checkpoint.epoch == 1 and checkpoint.history[0].test_acc == 0.6
    for (name, a), b in zip(model.state_dict().items(), fresh_model.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    for key, a in opt.state_dict().items():
        np.testing.assert_array_equal(a, fresh_opt.state_dict()[key], err_msg=key)
    assert fresh_opt.step_count == 1
    np.testing.assert_array_equal(fresh_rng.random(3), expected_next)


def test_checkpoint_is_loaded_without_pickle(tmp_path):
    model, opt = _model_and_optimizer()
    path = _save(tmp_path / "c.npz", model, opt, {"data": np.random.default_rng(0)})
    with np.load(path, allow_pickle=False) as npz:
        assert "model.2.weight" in npz.files and "optimizer.momentum.0" in npz.files
        assert npz["__checkpoint__"].dtype.kind == "U"


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(epoch=0), "'epoch' must be an integer >= 1"),
        (dict(history=[]), "'history' must list the 1 completed epochs"),
        (dict(history=[EpochStats(1, float("nan"), 0.5, 1.5, 0.6, 0.1)]), "train_loss must be a finite number"),
        (dict(history=[EpochStats(2, 2.0, 0.5, 1.5, 0.6, 0.1)]), "history row 1 is for epoch 2"),
        (dict(health=[{"epoch": 1}]), "health rows must have exactly the fields"),
        (dict(advice=["x"]), "'advice' must be a list"),
    ],
)
def test_checkpoint_with_bad_fields_is_refused(tmp_path, change, match):
    model, opt = _model_and_optimizer()
    path = _save(tmp_path / "c.npz", model, opt, {"data": np.random.default_rng(0)}, **change)
    with pytest.raises(CheckpointError, match=match.replace("[", r"\[").replace("(", r"\(")):
        load_checkpoint(path)


def test_checkpoint_that_does_not_fit_the_model_or_optimizer(tmp_path):
    model, opt = _model_and_optimizer("sgd")
    path = _save(tmp_path / "c.npz", model, opt, {"data": np.random.default_rng(0)})
    checkpoint = load_checkpoint(path)
    cnn = build_model("cnn", rng=np.random.default_rng(0))
    with pytest.raises(CheckpointError, match="do not fit the run's model"):
        restore(checkpoint, cnn, SGD(cnn.parameters(), lr=0.1), {})
    other = build_model("mlp", dropout=0.3, rng=np.random.default_rng(0))
    with pytest.raises(CheckpointError, match="does not fit the run's optimizer"):
        restore(checkpoint, other, Adam(other.parameters()), {})
    with pytest.raises(CheckpointError, match="no PCG64 state for the 'dropout' random generator"):
        restore(checkpoint, other, SGD(other.parameters(), lr=0.1, momentum=0.9), {"dropout": np.random.default_rng()})


@pytest.mark.parametrize("name, value, match", [
    ("model.1.num_batches_tracked", np.array(2.0, np.float32), "1.num_batches_tracked: dtype float32 does not fit"),
    ("model.1.running_var", -np.ones(16, np.float32), "1.running_var must hold finite values >= 0"),
    ("model.1.running_mean", np.full(16, np.inf, np.float32), "is not finite floating-point weights"),
    ("model.1.running_mean", np.array(["x"] * 16), "is not finite floating-point weights or an integer count"),
])
def test_a_checkpoint_with_bad_running_statistics_is_refused(tmp_path, name, value, match):
    model = build_model("cnn-bn", rng=np.random.default_rng(0))
    opt = SGD(model.parameters(), lr=0.1)
    path = _save(tmp_path / "c.npz", model, opt, {})
    with np.load(path) as z:
        arrays = {**{k: z[k] for k in z.files}, name: value}
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    fresh = build_model("cnn-bn", rng=np.random.default_rng(1))
    with pytest.raises(CheckpointError, match=match.replace("(", r"\(")):
        restore(load_checkpoint(path), fresh, SGD(fresh.parameters(), lr=0.1), {})


# --- divergence --------------------------------------------------------------------------------


def test_divergence_keeps_the_last_healthy_checkpoint(tmp_path, capsys):
    # Learning rate 1 with momentum 0.95: the loss stays finite but explodes past the divergence threshold
    # (100 ln 10 = 230) after an epoch or more that did not.
    out = tmp_path / "run"
    args = ["train", "--model", "mlp", "--train-subset", "300", "--batch-size", "50", "--epochs", "8", "--lr", "1",
            "--momentum", "0.95", "--weight-decay", "0.1", "--lr-schedule", "constant", "--quiet", "--out", str(out)]
    assert main(args) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("npconv: diverged in epoch ") and "> 230)" in err, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged", summary
    healthy_epochs = summary["epochs"]
    assert healthy_epochs >= 1 and summary["diverged_at"] == {"epoch": healthy_epochs + 1, "step": None}
    assert err.rstrip().endswith(f"kept epoch {healthy_epochs}") and len(err.rstrip()) <= 100, err
    checkpoint = load_checkpoint(out / CHECKPOINT_FILE)
    assert checkpoint.epoch == healthy_epochs
    rows = read_rows(out / "history.csv")
    assert len(rows) == healthy_epochs and summary["test_loss"] == float(rows[-1]["test_loss"])
    assert all(float(r["train_loss"]) <= 230 for r in rows), rows
    assert not (out / "model.npz").exists()
    # Resuming would only diverge again.
    assert main(["train", "--resume", str(out), "--quiet"]) == 2
    assert "diverged" in capsys.readouterr().err


def test_a_nan_loss_stops_the_run_at_its_step(tmp_path, capsys):
    # Weight decay 3 at learning rate 1 multiplies the weights by -2 each step: within the first epoch they overflow.
    out = tmp_path / "run"
    args = ["train", "--model", "mlp", "--train-subset", "300", "--batch-size", "10", "--epochs", "2", "--lr", "1",
            "--weight-decay", "3", "--momentum", "0", "--lr-schedule", "constant", "--quiet", "--out", str(out)]
    assert main(args) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("npconv: diverged at epoch 1, step ") and "no checkpoint" in err, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["epochs"] == 0 and summary["diverged_at"]["step"] >= 1
    assert not (out / CHECKPOINT_FILE).exists()


def test_divergence_threshold_is_a_hundred_times_the_loss_of_a_uniform_guess():
    assert divergence_threshold(10) == pytest.approx(100 * np.log(10))
    assert exploded(float("nan"), 230) and exploded(float("inf"), 230) and exploded(231.0, 230)
    assert not exploded(2.3, 230) and not exploded(230.0, 230)


# --- bad --resume input -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    run_training(TrainConfig(model="mlp", train_subset=200, epochs=2, batch_size=50, seed=1), out, **QUIET)
    return out


def _copy_run(finished_run, tmp_path, edit=None):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    if edit is not None:
        edit(run)
    return run


def _edit_config(**changes):
    def edit(run):
        config = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(json.dumps({**config, **changes}))
    return edit


def _other_runs_checkpoint(run):
    run_training(TrainConfig(model="mlp", train_subset=200, epochs=1, batch_size=50, seed=2), run.parent / "other",
                 **QUIET)
    shutil.copy(run.parent / "other" / CHECKPOINT_FILE, run / CHECKPOINT_FILE)


def _truncate_checkpoint(run):
    data = (run / CHECKPOINT_FILE).read_bytes()
    (run / CHECKPOINT_FILE).write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "edit, extra, match",
    [
        (None, [], "the run already completed its 2 epochs; to train it further, ask for more epochs (--epochs 7)"),
        (None, ["--epochs", "2"], "already completed, got 2"),
        (None, ["--epochs", "0"], "--epochs must be an integer >= 1"),
        (None, ["--lr", "0.1"], "--lr 0.1 conflicts with the run's 0.05"),
        (None, ["--model", "cnn"], "--model cnn conflicts with the run's 'mlp'"),
        (lambda run: (run / CHECKPOINT_FILE).unlink(), ["--epochs", "3"], "no checkpoint.npz to resume from"),
        (lambda run: (run / "config.json").unlink(), [], "no config.json; not an npconv run folder"),
        (lambda run: (run / "config.json").write_text("{not json"), [], "cannot be read as JSON"),
        (_edit_config(lr="fast"), [], "the setting 'lr' has the wrong type"),
        (_edit_config(lr=-1), [], "--lr must be a finite number > 0"),
        (_edit_config(seed=None), [], "the setting 'seed' has the wrong type"),
        (_truncate_checkpoint, ["--epochs", "3"], "damaged or not an npz checkpoint"),
        (_other_runs_checkpoint, ["--epochs", "3"], "belongs to another run than"),
    ],
    ids=["finished", "epochs-not-more", "epochs-0", "conflicting-lr", "conflicting-model", "no-checkpoint",
         "no-config", "config-not-json", "config-wrong-type", "config-out-of-range", "config-null",
         "truncated-checkpoint", "other-runs-checkpoint"],
)
def test_bad_resume_gives_one_line_and_status_2(finished_run, tmp_path, capsys, edit, extra, match):
    run = _copy_run(finished_run, tmp_path, edit)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".lock"}
    assert main(["train", "--resume", str(run), "--quiet", *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("npconv: error: ") and match in err, err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".lock"} == before, "nothing may change"


def test_resume_after_the_data_changed_is_refused(tmp_path, capsys):
    from npconv.data import DATASETS, write_idx

    rng = np.random.default_rng(0)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    files = DATASETS["mnist"].files

    def write_data():
        for part, n in (("train_images", 60), ("test_images", 20)):
            write_idx(data_dir / files[part], rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
            write_idx(data_dir / files[part.replace("images", "labels")], rng.integers(0, 10, n, dtype=np.uint8))

    write_data()
    run_training(TrainConfig(model="mlp", data_dir=str(data_dir), epochs=1, batch_size=20), tmp_path / "run", **QUIET)
    write_data()  # other images
    assert main(["train", "--resume", str(tmp_path / "run"), "--epochs", "2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "dataset_sha256" in err and "differ from when the run started" in err, err


@pytest.mark.parametrize(
    "target, args, match",
    [
        ("missing", [], "no such directory"),
        ("file", [], "not a directory"),
        ("empty", [], "no config.json; not an npconv run folder"),
    ],
)
def test_resume_of_something_that_is_not_a_run(tmp_path, capsys, target, args, match):
    path = tmp_path / target
    if target == "file":
        path.write_text("x")
    elif target == "empty":
        path.mkdir()
    assert main(["train", "--resume", str(path), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err, err
    if target == "empty":
        assert list(path.iterdir()) == [], "nothing may be written into a folder that is not a run"


def test_resume_and_out_are_exclusive(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--resume", str(tmp_path), "--out", str(tmp_path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not allowed with argument" in err


def test_training_into_a_folder_that_holds_a_run_is_refused(finished_run, tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path)
    before = (run / "history.csv").read_bytes()
    assert main(["train", "--model", "mlp", "--train-subset", "100", "--epochs", "1", "--quiet",
                 "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and f"--resume {run}" in err, err
    assert (run / "history.csv").read_bytes() == before


def test_a_run_started_from_a_model_file_resumes_bit_identical_without_the_file(tmp_path):
    """The weights came from the file once; the checkpoint carries them on, and the input scaling is as recorded."""
    run_training(TrainConfig(model="mlp", train_subset=200, epochs=1, batch_size=50, seed=1, normalize=False),
                 tmp_path / "start", **QUIET)
    config = TrainConfig(model="mlp", train_subset=300, epochs=2, batch_size=50, seed=2,
                         init_from=str(tmp_path / "start"))
    run_training(config, tmp_path / "reference", **QUIET)
    with pytest.raises(Interrupted):
        run_training(config, tmp_path / "run", progress=False, log=_stop_at(1))
    (tmp_path / "start" / "model.npz").unlink()
    assert resume_training(tmp_path / "run", **QUIET).status == "completed"
    assert_same_run(tmp_path / "reference", tmp_path / "run")
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded["init_from"] == str(tmp_path / "start") and recorded["normalize_mean"] is None, recorded
