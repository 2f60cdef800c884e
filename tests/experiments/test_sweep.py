"""Sweeps: grid parsing, run keys, divergence, resume after an interruption, and the Dask path.

Every run here is tiny (the MLP on 200 real MNIST images, 2 epochs): the
tests check the machinery, not the accuracy.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import small_bn_net, write_architecture_file
from dependencies import require

from npconv.errors import NpconvError
from npconv.train import TrainConfig
from npconv.experiments.results import TIMING_COLUMNS
from npconv.experiments.sweep import expand_grid, parse_grid, parse_values, run_key, run_sweep
from npconv.train.settings import make_config

TINY = {"model": "mlp", "epochs": "2", "train-subset": "200", "batch-size": "50", "momentum": "0"}
# Weight decay 1e3 at either learning rate multiplies the weights by -49 or -99 a step: the loss explodes in the
# first epoch, and those two runs diverge.
GRID = {**TINY, "lr": "0.05,0.1", "weight-decay": "0,1e3"}


def run_cli(*args, **kwargs):
    """``python -m npconv`` in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "npconv", *args], capture_output=True, text=True, timeout=300,
                          **kwargs)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def quiet(_line):
    pass


# ------------------------------------------------------------------ grids


def test_parse_grid_types_and_order():
    grid = parse_grid({"lr": "1e-4, 1e-3,1e-3", "seed": "0,1,2", "dropout-at": "before-pool",
                       "weight_decay": "5e-4", "model": "cnn,mlp"})
    assert grid == {"lr": [1e-4, 1e-3], "seed": [0, 1, 2], "dropout_at": ["before-pool"],
                    "weight_decay": [5e-4], "model": ["cnn", "mlp"]}, grid
    configs = expand_grid(grid)
    assert len(configs) == 2 * 2 * 3
    # TrainConfig field order, the last field (seed) varying fastest.
    assert [(c.model, c.lr, c.seed) for c in configs[:4]] == [("cnn", 1e-4, 0), ("cnn", 1e-4, 1), ("cnn", 1e-4, 2),
                                                                ("cnn", 1e-3, 0)]
    assert configs[0].epochs == TrainConfig().epochs, "options not in the grid keep train's defaults"


@pytest.mark.parametrize("option, text, message", [
    ("lr", "", "lr: empty list of values"),
    ("lr", "1e-3,", "lr: empty value in '1e-3,'"),
    ("lr", "1e-3,fast", "lr: 'fast' is not a number"),
    ("epochs", "1.5", "epochs: '1.5' is not an integer"),
    ("model", "resnet", "model: 'resnet' is not one of cnn, mlp"),
    ("learning-rate", "0.1", "learning_rate is not a training setting"),
    ("normalize", "yes", "normalize: 'yes' is not true or false"),
])
def test_bad_grid_values_are_clear_errors(option, text, message):
    with pytest.raises(NpconvError) as e:
        parse_values(option, text)
    assert str(e.value).startswith(message), f"expected {message!r}, got {str(e.value)!r}"


@pytest.mark.parametrize("args, message", [
    (["--learning-rate", "0.1"], "unrecognized arguments: --learning-rate 0.1"),
    (["--lr", ""], "--lr: empty list of values"),
    (["--weight-decay", "0.1,lots"], "--weight-decay: 'lots' is not a number"),
    (["--model", "cnn,mlp", "--dropout", "0.2", "--dropout-at", "before-pool"], "before-fc for the mlp model"),
])
def test_bad_grids_exit_2_with_one_line(tmp_path, args, message):
    out = tmp_path / "sweep"
    result = run_cli("sweep", *args, "--out", str(out))
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], f"expected one line with {message!r}, got {result.stderr!r}"
    assert not out.exists(), "nothing is written for a bad grid"


def test_run_key_covers_config_dataset_and_version():
    a = make_config({"model": "mlp", "lr": 1})  # an int for a float setting is the same setting
    b = make_config({"model": "mlp", "lr": 1.0})
    assert run_key(a, "d" * 64) == run_key(b, "d" * 64)
    assert run_key(a, "d" * 64) != run_key(make_config({"model": "mlp", "lr": 1.0, "seed": 1}), "d" * 64)
    assert run_key(a, "d" * 64) != run_key(a, "e" * 64), "another dataset is another run"
    assert run_key(a, "d" * 64) != run_key(a, "d" * 64, version="0.0.0"), "another npconv is another run"


# --------------------------------------------------------------- a real sweep


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    """GRID on two local worker processes."""
    out = tmp_path_factory.mktemp("local")
    runs = run_sweep(expand_grid(parse_grid(GRID)), str(out), workers=2, log=quiet)
    return out, runs


def test_sweep_writes_run_folders_and_results(local_sweep):
    out, runs = local_sweep
    rows = read_csv(out / "results.csv")
    assert len(rows) == 4 and {r["status"] for r in rows} == {"completed", "diverged"}, rows
    for row in rows:
        folder = out / row["run"]
        assert row["run"] == f"runs/mlp-{row['key'][:12]}"
        config = json.loads((folder / "config.json").read_text())
        assert config["lr"] == float(row["lr"]) and config["weight_decay"] == float(row["weight_decay"])
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["status"] == row["status"] and summary["out_dir"] == str(folder)
        if row["status"] == "completed":
            for name in ("history.csv", "model.npz", "curves.png"):
                assert (folder / name).is_file(), f"{name} missing from {folder}"
            assert float(row["test_acc"]) == summary["test_acc"]
    md = (out / "results.md").read_text()
    assert md.count("\n") == 2 + 4 and "| lr | weight_decay |" in md, md


def test_a_diverged_run_is_recorded_and_the_sweep_goes_on(local_sweep):
    out, runs = local_sweep
    diverged = [r for r in runs if r.status == "diverged"]
    settings = [(r.config.lr, r.config.weight_decay) for r in diverged]
    assert settings == [(0.05, 1e3), (0.1, 1e3)], [(r.config, r.status) for r in runs]
    summary = json.loads((out / os.path.relpath(diverged[0].folder.path, out) / "summary.json").read_text())
    assert summary["message"].startswith("diverged "), summary
    assert sum(r.status == "completed" for r in runs) == 2, "the runs after the diverged one still ran"


def test_dask_cluster_gives_the_same_results_as_local_processes(local_sweep, tmp_path):
    distributed = require("dask.distributed")
    local_out, _ = local_sweep
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        run_sweep(expand_grid(parse_grid(GRID)), str(tmp_path), scheduler=cluster.scheduler_address, log=quiet)
    local, remote = read_csv(local_out / "results.csv"), read_csv(tmp_path / "results.csv")
    for row in local + remote:
        for column in TIMING_COLUMNS:
            row.pop(column)
    assert local == remote, "results.csv from the Dask cluster differs from the local one beyond the timing columns"
    for row in local:
        if row["status"] == "completed":
            a = (local_out / row["run"] / "model.npz").read_bytes()
            assert a == (tmp_path / row["run"] / "model.npz").read_bytes(), f"{row['run']}: weights differ"


def test_a_local_worker_process_keeps_its_datasets_while_it_lives():
    """A sweep's worker trains run after run on the same data: its keep_loaded() block stays open (it is not a
    temporary that the garbage collector closes)."""
    import gc
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from npconv.data.datasets import keeping
    from npconv.experiments.executors import _start_worker

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker) as pool:
        pool.submit(gc.collect).result()
        assert pool.submit(keeping).result() is True


def test_dask_scheduler_that_does_not_answer_is_a_clear_error(tmp_path):
    require("dask.distributed")
    from npconv.experiments.executors import DaskCluster

    with pytest.raises(NpconvError, match="cannot connect to a Dask scheduler"):
        DaskCluster("tcp://127.0.0.1:9", timeout=1)


RESUMABLE = ["--model", "mlp", "--epochs", "3", "--train-subset", "2000", "--batch-size", "20", "--seed", "0,1,2"]


def read_run(folder):
    """A run folder's history (without the wall-clock seconds), health and weights: what must be bit-identical."""
    import numpy as np

    history = [{k: v for k, v in row.items() if k != "seconds"} for row in read_csv(folder / "history.csv")]
    with np.load(folder / "model.npz", allow_pickle=False) as z:
        weights = {name: z[name].tobytes() for name in z.files}
    return history, (folder / "health.csv").read_text(), weights


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """RESUMABLE swept without interruption: the reference a resumed sweep must equal."""
    out = tmp_path_factory.mktemp("whole")
    result = run_cli("sweep", *RESUMABLE, "--workers", "1", "--quiet", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.parametrize("workers", ["1", "2"])
def test_interrupted_sweep_resumes_its_runs_from_their_checkpoints(tmp_path, uninterrupted, workers):
    out = tmp_path / "sweep"
    args = ["sweep", *RESUMABLE, "--workers", workers, "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "npconv", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    runs = out / "runs"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # Ctrl-C once a run is past its first epoch
        if runs.is_dir() and any((d / "checkpoint.npz").exists() and not (d / "summary.json").exists()
                                 for d in runs.iterdir()):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the sweep finished before it could be interrupted")
    assert proc.returncode == 130, (proc.returncode, stderr)
    assert "Traceback" not in stderr and "run the same command again" in stdout, (stdout, stderr)
    assert "leaked semaphore" not in stderr and stderr.count("\n") == 1, stderr  # one line, nothing from the workers
    statuses = {r["run"]: r["status"] for r in read_csv(out / "results.csv")}
    cut = [name for name, status in statuses.items() if status == "interrupted"]
    assert cut, f"no run was cut off after an epoch: {statuses}"
    for name in cut:
        assert (out / name / "checkpoint.npz").exists() and not (out / name / "model.npz").exists()
    done = {name: (out / name / "summary.json").stat().st_mtime_ns for name, s in statuses.items() if s == "completed"}

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    first = again.stdout.splitlines()[0]
    assert first.startswith(f"3 runs: {len(done)} already done, {3 - len(done)} to train ({len(cut)} to resume)"), first
    assert "(resuming after epoch " in again.stdout or workers == "2", again.stdout
    for name, mtime in done.items():
        assert (out / name / "summary.json").stat().st_mtime_ns == mtime, f"{name} was trained again"
    assert [r["status"] for r in read_csv(out / "results.csv")] == ["completed"] * 3
    for name in statuses:  # the resumed runs end exactly as runs that were never interrupted
        assert read_run(out / name) == read_run(uninterrupted / name), f"{name} differs from the uninterrupted run"


def stop_after_epoch_1(line):
    """A run's log that stops it, as Ctrl-C would, right after its first epoch's checkpoint."""
    if line.startswith("epoch 1/"):
        raise KeyboardInterrupt


def test_a_run_resumed_elsewhere_from_its_files_is_bit_identical(tmp_path, uninterrupted):
    """What a Dask worker does: the run's files travel with the task, and it resumes in a folder of its own."""
    from npconv.experiments.executors import train_task
    from npconv.experiments.sweep import plan
    from npconv.train import run_training
    from npconv.train.runfolder import RunFolder

    grid = parse_grid({flag[2:]: value for flag, value in zip(RESUMABLE[::2], RESUMABLE[1::2])})
    run = plan(expand_grid(grid)[:1], str(tmp_path))[0]
    with pytest.raises(KeyboardInterrupt):
        run_training(run.config, run.folder.path, progress=False, log=stop_after_epoch_1)
    assert run.folder.read_summary().status == "interrupted"
    result = train_task(vars(run.config), None, run.folder.files())
    assert result["status"] == "completed" and result["resumed_from"] == 1, result
    resumed = RunFolder(tmp_path / "elsewhere")
    resumed.store(result["files"])
    assert read_run(tmp_path / "elsewhere") == read_run(uninterrupted / os.path.relpath(run.folder.path, tmp_path))


def test_compare_runs(local_sweep, tmp_path):
    out, runs = local_sweep
    folders = [r.folder.path for r in runs if r.status == "completed"]
    result = run_cli("compare", *folders, "--out", str(tmp_path / "c.png"))
    assert result.returncode == 0, result.stderr
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(folders), result.stdout
    assert "| lr=0.05 |" in result.stdout and "| lr=0.1 |" in result.stdout, "labelled by the settings that differ"
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A sweep folder stands for all its runs; an unfinished folder is an error.
    whole = run_cli("compare", str(out), "--out", str(tmp_path / "all.png"))
    assert len([line for line in whole.stdout.splitlines() if line.startswith("| ")]) == 1 + len(runs), whole.stdout
    bad = run_cli("compare", str(tmp_path), "--out", str(tmp_path / "x.png"))
    assert bad.returncode == 2 and "no summary.json" in bad.stderr, bad.stderr


BLOCK_DASK = """
import importlib.abc, sys
class NoDask(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("dask", "distributed"):
            raise ModuleNotFoundError(name)
        return None
sys.meta_path.insert(0, NoDask())
import importlib.util
importlib.util.find_spec = (lambda find: lambda name, *a: None if name.split(".")[0] in ("dask", "distributed")
                            else find(name, *a))(importlib.util.find_spec)
from npconv.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_scheduler_without_dask_names_the_extra(tmp_path):
    """Dask is an optional extra: without it, --scheduler is one clear line and exit status 2."""
    out = tmp_path / "sweep"
    result = subprocess.run([sys.executable, "-c", BLOCK_DASK, "sweep", *sum(([f"--{k}", v] for k, v in TINY.items()),
                             []), "--scheduler", "tcp://127.0.0.1:9", "--no-estimate", "--out", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and 'pip install "npconv[dask]"' in lines[0] and "--scheduler" in lines[0], lines
    assert not out.exists(), "nothing is written when the executor cannot start"


def test_a_sweep_over_architecture_files_names_runs_by_file_and_keys_them_by_architecture(tmp_path):
    write_architecture_file(tmp_path / "a.toml", small_bn_net(channels=2))
    write_architecture_file(tmp_path / "b.toml", small_bn_net(channels=3))
    grid = parse_grid({**TINY, "model": f"{tmp_path / 'a.toml'},{tmp_path / 'b.toml'}"})
    out = tmp_path / "sweep"
    first = run_sweep(expand_grid(grid), str(out), workers=1, progress=False, log=quiet)
    assert [r.status for r in first] == ["completed", "completed"]
    assert [os.path.basename(r.folder.path)[:2] for r in first] == ["a-", "b-"], "folders named by the file"
    recorded = json.loads((out / "runs" / os.path.basename(first[0].folder.path) / "config.json").read_text())
    assert recorded["model_layers"][0]["out_channels"] == 2

    write_architecture_file(tmp_path / "a.toml", small_bn_net(channels=4))
    second = run_sweep(expand_grid(grid), str(out), workers=1, progress=False, log=quiet, estimate=False)
    assert second[0].key != first[0].key and not second[0].reused, "a.toml changed: another run"
    assert second[1].key == first[1].key and second[1].reused, "b.toml did not change: its run is reused"


def test_a_run_another_sweep_finished_meanwhile_is_not_trained_again(tmp_path, uninterrupted):
    import shutil

    from npconv.experiments.executors import train_task

    name = sorted(os.listdir(uninterrupted / "runs"))[0]
    folder = tmp_path / name
    shutil.copytree(uninterrupted / "runs" / name, folder)
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    config = {k: v for k, v in json.loads((folder / "config.json").read_text()).items()
              if k in TrainConfig.__dataclass_fields__}
    result = train_task(config, str(folder))
    assert result["status"] == "completed" and "files" not in result
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before, "the finished run was touched"
