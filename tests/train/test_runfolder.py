"""The run folder: its typed summary, its history read back, moving a run between folders, finding runs."""

import json
import math

import pytest

from npconv.errors import NpconvError
from npconv.train.loop import EpochStats
from npconv.train.health import health_csv
from npconv.train.runfolder import RunFolder, Summary, find_runs, history_csv, read_health, read_history


def stats(epoch, acc=0.9, val=False):
    return EpochStats(epoch, 0.5 / epoch, acc, 0.6 / epoch, acc - 0.01, 1.25 * epoch,
                      *((0.7, acc - 0.02) if val else (None, None)))


def test_summary_of_a_completed_run():
    history = [stats(1, 0.8), stats(2, 0.9)]
    s = Summary.of("completed", history, "runs/x", ["advice 1"])
    assert (s.status, s.epochs, s.test_acc, s.total_seconds, s.seconds_per_epoch) == ("completed", 2, 0.89, 3.75,
                                                                                        1.875)
    obj = s.to_json()
    assert list(obj) == ["status", "epochs", "train_loss", "train_acc", "test_loss", "test_acc", "total_seconds",
                         "seconds_per_epoch", "out_dir", "advice"], "no keys that do not apply (val, checkpoint)"
    assert Summary.from_json(json.loads(json.dumps(obj)), "x") == s and s.done


def test_summary_of_runs_that_did_not_complete():
    diverged = Summary.of("diverged", [stats(1)], "d", [], message="loss became nan", diverged_at={"epoch": 2,
                                                                                                  "step": 5})
    assert diverged.to_json()["checkpoint"] == "checkpoint.npz" and diverged.done
    interrupted = Summary.of("interrupted", [], "i", [], signal="SIGINT")
    obj = interrupted.to_json()
    assert obj["checkpoint"] is None and obj["epochs"] == 0 and "test_acc" not in obj and not interrupted.done


@pytest.mark.parametrize("obj", [{}, {"status": "done", "epochs": 1}, {"status": "completed", "epochs": "1"}])
def test_a_summary_that_is_not_one_is_refused(obj):
    with pytest.raises(NpconvError, match="not an npconv run summary"):
        Summary.from_json(obj, "summary.json")


def test_history_round_trips_in_full_precision(tmp_path):
    history = [stats(1, val=True), EpochStats(2, 1 / 3, 0.1 + 0.2, math.pi, 2 / 7, 0.5, 1e-300, 0.125)]
    path = tmp_path / "history.csv"
    path.write_text(history_csv(history))
    back = read_history(path)
    for a, b in zip(history, back):
        assert b.seconds == pytest.approx(a.seconds, abs=5e-4)  # written with 3 decimals
        a.seconds = b.seconds
    assert back == history


def test_health_reads_back_as_written(tmp_path):
    rows = [{"epoch": 1, "layer": 0, "type": "Conv2d", "grad_norm": 0.125, "update_ratio": 1 / 3,
             "dead_fraction": None, "saturated_fraction": None},
            {"epoch": 1, "layer": 1, "type": "ReLU", "grad_norm": None, "update_ratio": None,
             "dead_fraction": 0.2, "saturated_fraction": None}]
    path = tmp_path / "health.csv"
    path.write_text(health_csv(rows))
    assert read_health(path) == rows and read_health(tmp_path / "missing.csv") == []
    path.write_text("epoch,layer,type\n1,x,ReLU\n")
    with pytest.raises(NpconvError, match="malformed health row"):
        read_health(path)


def test_store_moves_a_run_and_points_its_summary_at_the_new_folder(tmp_path):
    source = RunFolder(tmp_path / "a")
    source.create()
    source.write_config({"model": "mlp"})
    source.write_summary(Summary.of("completed", [stats(1)], source.path, []))
    (tmp_path / "a" / ".lock").write_text("123")
    files = source.files()
    assert sorted(files) == ["config.json", "summary.json"], "no lock or temporary files travel"
    target = RunFolder(tmp_path / "b")
    summary = target.store(files)
    assert summary.out_dir == target.path == target.read_summary().out_dir
    assert target.read_config() == {"model": "mlp"}


def test_find_runs_in_a_run_a_sweep_and_a_folder_of_runs(tmp_path):
    def make(path):
        folder = RunFolder(path)
        folder.create()
        folder.write_config({})
        return str(path)

    one = make(tmp_path / "run")
    sweep = [make(tmp_path / "sweep" / "runs" / name) for name in ("cnn-b", "cnn-a")]
    (tmp_path / "sweep" / "runs" / "not-a-run").mkdir()
    assert find_runs(one) == [one]
    assert find_runs(tmp_path / "sweep") == sorted(sweep)
    assert find_runs(tmp_path / "sweep" / "runs") == sorted(sweep), "the runs/ folder npconv train writes into"
    assert find_runs(tmp_path / "nothing") == []
