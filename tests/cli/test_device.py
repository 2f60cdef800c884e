"""``--device cuda`` where CuPy or a CUDA device is missing: one line that says which, exit 2, nothing written."""

import subprocess
import sys

import pytest

from npconv import backend
from npconv.errors import SettingError


def cuda_usable():
    try:
        with backend.on_device("cuda"):
            return True
    except SettingError:
        return False


pytestmark = pytest.mark.skipif(cuda_usable(), reason="a CUDA device is usable here: --device cuda runs")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "npconv", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command", [
    ["train", "--model", "mlp", "--epochs", "1", "--train-subset", "100"],
    ["sweep", "--model", "mlp", "--epochs", "1", "--train-subset", "100", "--no-estimate"],
])
def test_training_on_a_missing_gpu_is_one_line(tmp_path, command):
    out = tmp_path / "out"
    result = run_cli(*command, "--device", "cuda", "--out", str(out))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("npconv: error: --device cuda"), lines
    assert "CuPy" in lines[0] and ('pip install "npconv[cuda]"' in lines[0] or "no CUDA device" in lines[0])
    assert not out.exists(), "nothing is written"


def test_evaluate_and_predict_on_a_missing_gpu_are_one_line(tmp_path):
    run = tmp_path / "run"
    assert run_cli("train", "--model", "mlp", "--epochs", "1", "--train-subset", "100", "--quiet",
                   "--out", str(run)).returncode == 0
    for command in (["evaluate", str(run / "model.npz")], ["predict", str(run / "model.npz"), str(run / "curves.png")]):
        result = run_cli(*command, "--device", "cuda")
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--device cuda" in result.stderr, \
            (command, result.stderr)
