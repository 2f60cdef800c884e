"""What a run writes while it trains: ``losses.csv`` (every step's loss) and ``snapshot.npz`` (the first
convolution's filters and feature maps), read back while they are written."""

import numpy as np
import pytest

from npconv import nn
from npconv.train import TrainConfig, run_training
from npconv.train.modelfile import load_model
from npconv.train.runfolder import LOSSES_FILE, RunFolder, read_losses

QUIET = dict(progress=False, log=lambda *args: None)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("live") / "run"
    run_training(TrainConfig(model="cnn", epochs=2, train_subset=200, batch_size=50, seed=2), path, **QUIET)
    return RunFolder(path)


def test_every_steps_loss_is_written_once_in_order(run):
    rows = run.read_losses()
    assert [(step, epoch) for step, epoch, _, _ in rows] == [(s, 1 + (s - 1) // 4) for s in range(1, 9)]
    times = [t for *_, t in rows]
    assert times == sorted(times)
    history = run.read_history()
    for epoch in (1, 2):  # four batches of 50: the epoch's mean training loss is the mean of its steps' losses
        losses = [loss for _, e, loss, _ in rows if e == epoch]
        assert np.mean(losses) == pytest.approx(history[epoch - 1].train_loss, rel=1e-6)


def test_a_line_still_being_written_waits_for_its_end(tmp_path):
    path = tmp_path / LOSSES_FILE
    path.write_text("step,epoch,loss,time\n1,1,2.3,100.5\n2,1,2.")
    rows, offset = read_losses(path)
    assert rows == [(1, 1, 2.3, 100.5)] and offset == len("step,epoch,loss,time\n1,1,2.3,100.5\n")
    with open(path, "a") as f:
        f.write("25,101.0\n")
    assert read_losses(path, offset) == ([(2, 1, 2.25, 101.0)], len(path.read_text()))
    assert read_losses(tmp_path / "none.csv") == ([], 0)


def test_a_resumed_run_drops_the_steps_of_the_epoch_it_repeats(tmp_path, run):
    folder = RunFolder(tmp_path)
    (tmp_path / LOSSES_FILE).write_bytes(open(run.file(LOSSES_FILE), "rb").read())
    folder.keep_losses(1)
    assert [r[0] for r in folder.read_losses()] == [1, 2, 3, 4]
    log = folder.open_losses()
    log.write(5, 2, 0.5, 200.0)
    log.close()
    assert folder.read_losses()[-1] == (5, 2, 0.5, 200.0)


def test_the_snapshot_is_the_first_convolution_at_the_end(run):
    snapshot = run.read_snapshot()
    assert int(snapshot["step"]) == 8 and int(snapshot["epoch"]) == 2 and int(snapshot["layer"]) == 0
    model, _ = load_model(run.file("model.npz"))
    np.testing.assert_array_equal(snapshot["weight"], model[0].weight.data)
    with nn.no_grad():
        maps = model[0](snapshot["image"][None, None])
    assert snapshot["maps"].shape == (8, 28, 28)
    np.testing.assert_allclose(snapshot["maps"], maps[0], rtol=1e-5, atol=1e-5)


def test_a_model_without_a_convolution_has_no_snapshot(tmp_path):
    run_training(TrainConfig(model="mlp", epochs=1, train_subset=100, batch_size=50), tmp_path / "mlp", **QUIET)
    folder = RunFolder(tmp_path / "mlp")
    assert folder.read_snapshot() is None and len(folder.read_losses()) == 2
