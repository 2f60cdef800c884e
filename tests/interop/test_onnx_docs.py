"""The ONNX Runtime example of docs/onnx.md and the README runs, and gives npconv's logits; ``import npconv`` and
its command line never load onnx."""

import os
import re
import subprocess
import sys

import numpy as np

from npconv import nn
from npconv.inference import model_input
from npconv.onnx.export import export_onnx
from npconv.train.modelfile import save_model

from .cases import model_and_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def example(path):
    """The Python block that runs a graph with ONNX Runtime in the Markdown file at ``path``."""
    text = open(os.path.join(ROOT, path), encoding="utf-8").read()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "onnxruntime" in b]
    assert len(blocks) == 1, f"{path}: {len(blocks)} ONNX Runtime examples"
    return blocks[0]


def test_the_onnx_runtime_example_runs_and_gives_npconvs_logits(tmp_path, ort, monkeypatch):
    code = example("docs/onnx.md")
    assert example("README.md") == code, "the README shows the same example"
    assert len(code.strip().splitlines()) == 3
    model, config = model_and_config("cnn")
    save_model(tmp_path / "model.npz", model, config)
    export_onnx(tmp_path / "model.npz", tmp_path / "digits.onnx")
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(code, "docs/onnx.md", "exec"), scope)  # noqa: S102 - our own documentation's example
    with nn.no_grad():
        expected = model(model_input(np.zeros((1, 28, 28), np.uint8), config))
    assert scope["logits"].shape == (1, 10)
    np.testing.assert_allclose(scope["logits"], expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_npconv_and_its_command_line_load_onnx_only_when_used():
    code = ("import sys, npconv, npconv.cli.main, npconv.onnx.export, npconv.onnx.importer; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxruntime', 'google')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]", loaded
