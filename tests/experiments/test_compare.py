"""``npconv compare`` and ``npconv runs`` on real run folders: settings over seeds, many settings, unfinished runs."""

import json
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from npconv.experiments.compare import compare
from npconv.plots import MAX_SERIES
from npconv.experiments.sweep import expand_grid, parse_grid, run_sweep
from npconv.io import lock_dir

TINY = {"model": "mlp", "epochs": "1", "train-subset": "100", "batch-size": "50"}
LRS = ",".join(str(0.01 * k) for k in range(1, 13))  # 12 settings: more than one row of panels


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "npconv", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd)


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweeps")
    quiet = lambda _line: None  # noqa: E731
    run_sweep(expand_grid(parse_grid({**TINY, "lr": "0.05,0.1", "seed": "0,1"})), str(root / "seeds"), workers=1,
              progress=False, estimate=False, log=quiet)
    run_sweep(expand_grid(parse_grid({**TINY, "lr": LRS})), str(root / "many"), workers=1, progress=False,
              estimate=False, log=quiet)
    return root


def test_runs_that_differ_only_in_their_seed_are_one_setting(sweeps, tmp_path):
    result = compare([sweeps / "seeds"], tmp_path / "c.png")
    assert [g.label for g in result.settings] == ["lr=0.05", "lr=0.1"]
    rows = [line for line in result.table.splitlines() if line.startswith("| lr=")]
    assert len(rows) == 2 and all("2 runs (seeds 0, 1)" in row and " ± " in row for row in rows), rows


def test_many_settings_get_more_rows_of_panels_and_no_warning(sweeps, tmp_path):
    result = run_cli("compare", str(sweeps / "many"), str(sweeps / "seeds"), "--out", str(tmp_path / "many.png"))
    assert result.returncode == 0, result.stderr
    # lr 0.05 and 0.1 with seed 0 are in both sweeps: the same runs, counted once; no matplotlib warning leaks out.
    assert result.stderr.startswith("npconv: counted once 2 runs found twice: ") and result.stderr.count("\n") == 1
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0][2:] for row in rows[1:]] == [f"lr={0.01 * k:g}" for k in range(1, 13)], rows
    assert "2 runs (seeds 0, 1)" in rows[5] and "2 runs (seeds 0, 1)" in rows[10], rows
    one = compare([sweeps / "seeds"], tmp_path / "one.png")
    with Image.open(tmp_path / "many.png") as many, Image.open(tmp_path / "one.png") as single:
        rows_of_panels = -(-12 // MAX_SERIES)
        assert rows_of_panels == 2 and many.height > 1.8 * single.height, (many.size, single.size)
    assert len(one.settings) == 2


def test_a_folder_of_runs_skips_the_unfinished_ones_with_one_line(sweeps, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(sweeps / "seeds" / "runs", runs)
    unfinished = runs / "mlp-stopped"
    unfinished.mkdir()
    config = json.loads(next(runs.glob("mlp-*/config.json")).read_text())
    (unfinished / "config.json").write_text(json.dumps(config))  # killed before any summary was written
    result = run_cli("compare", "runs", "--out", "c.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "npconv: skipped 1 unfinished run (no summary.json): runs/mlp-stopped\n", result.stderr
    alone = run_cli("compare", "runs/mlp-stopped", "--out", "c.png", cwd=tmp_path)
    assert alone.returncode == 2 and "not a finished run (no summary.json)" in alone.stderr


def test_runs_lists_every_run_newest_first_with_its_status(sweeps, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(sweeps / "seeds" / "runs", runs)
    config = json.loads(next(runs.glob("mlp-*/config.json")).read_text())
    for name in ("killed", "training"):
        (runs / name).mkdir()
        (runs / name / "config.json").write_text(json.dumps(config))
    with lock_dir(runs / "training"):  # an npconv process holds it: it is training
        result = run_cli("runs", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["status", "model", "dataset", "epochs", "test", "acc", "when", "folder"]
    assert lines[-1] == "6 runs: 4 completed, 1 running, 1 unfinished" or lines[-1].startswith("6 runs: "), lines
    statuses = {line.split()[-1]: line.split()[0] for line in lines[1:-1]}
    assert statuses["runs/training"] == "running" and statuses["runs/killed"] == "unfinished", statuses
    assert sum(s == "completed" for s in statuses.values()) == 4
    assert [line.split()[-1] for line in lines[1:3]] == ["runs/training", "runs/killed"] or \
        {line.split()[-1] for line in lines[1:3]} == {"runs/training", "runs/killed"}, "newest first"
    assert all(len(line) <= 100 for line in lines)
    empty = run_cli("runs", str(tmp_path / "nothing-here"))
    assert empty.returncode == 2 and "no such directory" in empty.stderr


def test_labels_show_no_python_none_and_a_model_file_names_its_run(sweeps, tmp_path):
    from npconv.experiments.compare import _value

    assert (_value("train_subset", None), _value("init_std", None), _value("normalize", False)) == \
        ("all", "none", "false")
    run = sorted((sweeps / "seeds" / "runs").iterdir())[0]
    by_model = compare([run / "model.npz"], tmp_path / "m.png")
    assert [r.path for g in by_model.settings for r in g.records] == [str(run)]
    (tmp_path / "loose.npz").write_bytes((run / "model.npz").read_bytes())
    result = run_cli("compare", str(tmp_path / "loose.npz"), "--out", str(tmp_path / "x.png"))
    assert result.returncode == 2 and "a model file outside a run folder" in result.stderr, result.stderr
