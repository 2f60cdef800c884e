"""Atomic writes survive kill -9 at any moment; a run folder is locked against a second writer."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from npconv.train.checkpoint import load_checkpoint, save_checkpoint
from npconv.cli import main
from npconv.io import atomic_write, lock_dir
from npconv.models import build_model
from npconv.optim import SGD
from npconv.train.modelfile import load_model, save_model
from npconv.train.loop import EpochStats


def _writer(folder, rounds=10**9):
    """Rewrite three files over and over; in version v every value in every file is v."""
    model = build_model("mlp", rng=np.random.default_rng(0))
    optimizer = SGD(model.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(0)
    for v in range(1, rounds + 1):
        for p in model.parameters():
            p.data[...] = v
        with atomic_write(os.path.join(folder, "history.csv"), "w") as f:
            for _ in range(20000):  # ~100 kB, written in many small pieces
                f.write(f"{v},{v},{v}\n")
        save_model(os.path.join(folder, "model.npz"), model, {"model": "mlp", "dtype": "float32", "version": v})
        save_checkpoint(os.path.join(folder, "checkpoint.npz"), model, optimizer, epoch=1, config={"version": v},
                        history=[EpochStats(1, 1.0, 0.5, 1.0, 0.5, 0.0)], rngs={"data": rng})


def _check_complete(folder):
    """Each file is absent (never written yet) or a complete copy of one version."""
    path = os.path.join(folder, "history.csv")
    if os.path.exists(path):
        lines = open(path).read().splitlines()
        assert len(lines) == 20000 and len(set(lines)) == 1, "history.csv is torn"
    if os.path.exists(os.path.join(folder, "model.npz")):
        model, config = load_model(os.path.join(folder, "model.npz"))
        assert all((p.data == config["version"]).all() for p in model.parameters()), "model.npz mixes versions"
    if os.path.exists(os.path.join(folder, "checkpoint.npz")):
        checkpoint = load_checkpoint(os.path.join(folder, "checkpoint.npz"))
        version = checkpoint.config["version"]
        assert all((a == version).all() for a in checkpoint.model_state.values()), "checkpoint mixes versions"


def test_kill_9_at_any_moment_leaves_complete_files(tmp_path):
    rng = random.Random(0)
    torn_writes = 0
    for round_ in range(25):
        pid = os.fork()
        if pid == 0:  # the child writes until it is killed
            try:
                _writer(str(tmp_path))
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0.0, 0.15))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status), f"round {round_}: the writer ended before it was killed"
        _check_complete(str(tmp_path))
        stray = [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
        torn_writes += bool(stray)
        for name in stray:  # what a killed writer leaves: a temporary file, never a torn target
            os.unlink(tmp_path / name)
    assert os.path.exists(tmp_path / "model.npz"), "the writer never completed a file: kill later"
    assert torn_writes >= 5, f"only {torn_writes} kills landed in the middle of a write"


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text('{"old": true}')
    with pytest.raises(RuntimeError):
        with atomic_write(path, "w") as f:
            f.write('{"new": ')
            raise RuntimeError("disk full")
    assert json.loads(path.read_text()) == {"old": True}
    assert os.listdir(tmp_path) == ["summary.json"], "the temporary file is removed"


def test_lock_is_exclusive_and_names_the_holder(tmp_path):
    with lock_dir(tmp_path):
        # Another process (a lock held by this one would be shared by the same open file, so fork).
        code = subprocess.run([sys.executable, "-c", f"from npconv.io import lock_dir\nwith lock_dir({str(tmp_path)!r}): pass"],
                              capture_output=True, text=True, timeout=60)
        assert code.returncode != 0 and f"is in use by another npconv process (pid {os.getpid()})" in code.stderr
    with lock_dir(tmp_path):  # released: can be taken again
        pass


def test_train_refuses_a_folder_in_use(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    pid = os.fork()
    if pid == 0:  # a child holds the lock, as a running npconv would
        try:
            with lock_dir(out):
                time.sleep(30)
        finally:
            os._exit(0)
    try:
        deadline = time.monotonic() + 10
        while not (out / ".lock").exists() or not (out / ".lock").read_text().strip():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        args = ["train", "--model", "mlp", "--train-subset", "100", "--epochs", "1", "--quiet", "--out", str(out)]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{out} is in use by another npconv process (pid {pid})" in err, err
        assert sorted(os.listdir(out)) == [".lock"], "nothing may be written into a folder in use"
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    # The holder died: the kernel dropped its lock, the folder is usable again.
    assert main(["train", "--model", "mlp", "--train-subset", "100", "--epochs", "1", "--quiet", "--out", str(out)]) == 0


def test_two_concurrent_trainings_into_one_folder_cannot_both_run(tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "npconv", "train", "--model", "mlp", "--train-subset", "3000", "--batch-size", "20",
            "--epochs", "2", "--quiet", "--out", str(out)]
    first, second = (subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2))
    results = [(p.wait(timeout=300), p.communicate()[1]) for p in (first, second)]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    (err,) = [err for code, err in results if code == 2]
    # Refused by the lock while the other trains, or, if it already finished, because the folder holds its run.
    assert "is in use by another npconv process" in err or "already holds a run" in err, err
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    assert len((out / "history.csv").read_text().splitlines()) == 3
