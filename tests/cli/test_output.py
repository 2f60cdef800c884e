"""What npconv prints, as a user sees it: lines within 100 columns, plurals right, progress bars only on a terminal."""

import os
import pty
import re
import subprocess
import sys

import pytest

from npconv.text import WIDTH, format_seconds, plural, shorten, shorten_start

TINY = ["--model", "mlp", "--train-subset", "200", "--batch-size", "50"]


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "npconv", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": os.getcwd()})


def test_text_helpers():
    assert [plural(n, "run") for n in (0, 1, 2)] == ["0 runs", "1 run", "2 runs"]
    assert plural(1, "epoch") == "1 epoch" and plural(3, "class", "classes") == "3 classes"
    assert shorten("x" * 120) == "x" * 97 + "..." and len(shorten("x" * 120, 10)) == 10
    assert shorten_start("runs/a/b/seven.png", 12) == "...seven.png"
    assert [format_seconds(s) for s in (44.6, 60, 750, 3900)] == ["45 s", "1 min 00 s", "12 min 30 s", "1 h 05 min"]


def test_every_line_of_a_session_fits_and_no_progress_bar_goes_to_a_pipe(tmp_path):
    """train (with a validation split), a sweep, runs, compare, predict and evaluate, all to pipes."""
    from PIL import Image

    from npconv.data import load_dataset

    Image.fromarray(255 - load_dataset("mnist").test_images[0]).save(tmp_path / "seven.png")
    outputs = [
        run_cli("train", *TINY, "--epochs", "1", "--val-split", "0.2", "--out", "runs/one", cwd=tmp_path),
        run_cli("train", *TINY, "--epochs", "2", "--lr", "1e3", "--out", "runs/exploding", cwd=tmp_path),
        run_cli("sweep", *TINY, "--epochs", "1", "--lr", "0.01,0.02", "--seed", "0,1", "--workers", "1",
                "--out", "sweep", cwd=tmp_path),
        run_cli("runs", cwd=tmp_path),
        run_cli("compare", "sweep", "--out", "c.png", cwd=tmp_path),
        run_cli("predict", "runs/one/model.npz", "seven.png", ".", cwd=tmp_path),
        run_cli("evaluate", "runs/one/model.npz", cwd=tmp_path),
    ]
    assert [r.returncode for r in outputs] == [0, 3, 0, 0, 0, 0, 0], [(r.args, r.stderr) for r in outputs]
    text = "".join(r.stdout + r.stderr for r in outputs)
    assert "\r" not in text, "a progress bar was written to a pipe"
    too_long = [line for line in text.splitlines() if len(line) > WIDTH and not line.startswith("|")]
    assert not too_long, too_long  # Markdown tables (compare) are data, read in a viewer
    assert "for 1 epoch ->" in text and "1 epochs" not in text and "1 runs" not in text
    assert re.search(r"^4 runs: 4 completed", text, re.M), text
    assert "npconv: diverged in epoch 1 (train loss " in outputs[1].stderr


@pytest.mark.skipif(not hasattr(pty, "openpty"), reason="needs a pseudo-terminal")
def test_progress_bars_show_on_a_terminal(tmp_path):
    import fcntl
    import struct
    import termios

    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal 100 columns wide
    proc = subprocess.Popen([sys.executable, "-m", "npconv", "train", *TINY, "--epochs", "1", "--out", "run"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=child, env={**os.environ,
                                                                                     "PYTHONPATH": os.getcwd()})
    os.close(child)
    seen = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    proc.wait(timeout=300)
    os.close(main)
    assert proc.returncode == 0 and b"batch" in seen and b"\r" in seen, seen[-300:]
