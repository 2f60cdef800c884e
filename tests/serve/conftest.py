"""What the serve tests serve: a small trained ConvNet, a real two-run sweep, a study-like folder and a model file,
and a real ``npconv serve`` process answering on a free loopback port."""

import os
import shutil
from dataclasses import dataclass

import numpy as np
import pytest
from .webclient import start_server, stop_server

from npconv import models

from npconv.data import load_dataset
from npconv.experiments.sweep import expand_grid, run_sweep
from npconv.train import TrainConfig, run_training
from npconv.train.modelfile import model_config, save_model
from npconv.train.runfolder import RunFolder

REPORT = """# A study

Some text with <script>alert("no")</script> raw HTML in it, and a [bad link](javascript:alert(1)).

![the curves](figures/curves.png)

![from outside](/etc/hostname) ![remote](https://example.com/x.png)

[a run](runs/{run})
"""


@dataclass
class Served:
    root: str     # everything below lives here
    run: str      # a completed cnn run folder (5000 images, 2 epochs)
    sweep: str    # a sweep folder: two mlp runs
    study: str    # a sweep folder with a REPORT.md, a figure, a figure linked out of it, a run linked out of it
    model: str    # a model file on its own
    untrained: str  # a model file of a cnn that has not learned anything: every class 10 %
    secret: str   # a file outside every served folder


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    quiet = dict(progress=False, log=lambda *args: None)
    run = root / "cnn-run"
    run_training(TrainConfig(train_subset=5000, epochs=2, batch_size=50, seed=1), run, **quiet)
    sweep = root / "sweep"
    run_sweep(expand_grid({"lr": [0.05, 0.1]}, {"model": "mlp", "epochs": 1, "train_subset": 300}), sweep,
              workers=1, estimate=False, **quiet)
    study = root / "study"
    shutil.copytree(sweep, study)
    first = sorted(os.listdir(study / "runs"))[0]
    (study / "REPORT.md").write_text(REPORT.format(run=first))
    (study / "figures").mkdir()
    shutil.copy(run / "curves.png", study / "figures" / "curves.png")
    secret = root / "secret.txt"
    secret.write_text("the secret")
    os.symlink(secret, study / "figures" / "leak.png")   # a figure that points out of the folder
    os.symlink(run, study / "runs" / "zz-linked-run")     # a run folder that points out of the folder
    model = root / "solo" / "model.npz"
    model.parent.mkdir()
    shutil.copy(run / "model.npz", model)
    untrained = root / "untrained" / "model.npz"
    untrained.parent.mkdir()
    save_model(untrained, models.cnn(rng=np.random.default_rng(0)), model_config(RunFolder(run).read_config()))
    return Served(str(root), str(run), str(sweep), str(study), str(model), str(untrained), str(secret))


@pytest.fixture(scope="session")
def server(served):
    """A ``Client`` of a real ``npconv serve`` of everything in ``served`` (run ids: cnn-run, solo-model.npz,
    untrained-model.npz and the runs of the folders sweep and study)."""
    proc, client = start_server([served.run, served.sweep, served.study, served.model, served.untrained])
    client.process = proc
    yield client
    stop_server(proc)


@pytest.fixture(scope="session")
def mnist():
    return load_dataset("mnist")


