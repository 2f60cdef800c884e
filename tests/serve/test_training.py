"""The Train view's API: start, follow, stop and resume runs from the page, through a real ``npconv serve``."""

import http.client
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from dependencies import require

from .webclient import start_server, stop_server

from npconv.train import TrainConfig, run_training
from npconv.train.runfolder import RunFolder
from npconv.train.settings import SETTINGS

require("starlette")
require("uvicorn")

#: A run that trains in a second or two: 30 steps of 20 images.
QUICK = {"model": "mlp", "epochs": 1, "train_subset": 600, "batch_size": 20}


TINY = """[[layer]]
type = "conv2d"
out_channels = 4
kernel_size = 3

[[layer]]
type = "relu"

[[layer]]
type = "flatten"

[[layer]]
type = "linear"
out_features = 10
"""


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    """A Client of ``npconv serve`` of an empty folder of runs (``client.folder``), with a model file in it."""
    folder = tmp_path_factory.mktemp("train") / "runs"
    folder.mkdir()
    (folder / "tiny.toml").write_text(TINY)
    proc, client = start_server([str(folder)], "--max-epochs", "5", "--max-train-images", "5000")
    client.folder = str(folder)
    yield client
    stop_server(proc)


def post(client, path, obj=None, body=None, headers=None):
    """POST JSON (or ``body`` as given); returns (status, the decoded JSON answer)."""
    sent = {"Content-Type": "application/json", **(headers or {})}
    status, _, answer = client.request("POST", path, body=json.dumps(obj) if body is None else body, headers=sent)
    return status, json.loads(answer)


def events(client, run, timeout=120):
    """Every event of the run's stream until it ends: a list of (name, data)."""
    conn = http.client.HTTPConnection(client.host, client.port, timeout=timeout)
    conn.request("GET", f"/api/runs/{run}/events")
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("content-type").startswith("text/event-stream")
    found, name = [], None
    try:
        while True:
            line = response.fp.readline().decode()
            assert line, f"the stream ended without an end event: {[n for n, _ in found]}"
            if line.startswith("event: "):
                name = line[7:].strip()
            elif line.startswith("data: "):
                found.append((name, json.loads(line[6:])))
                if name == "end":
                    return found
    finally:
        conn.close()


def wait_for(client, run, predicate, seconds=120):
    deadline = time.monotonic() + seconds
    while True:
        detail = client.json(f"/api/runs/{run}")
        if predicate(detail):
            return detail
        assert time.monotonic() < deadline, f"run {run}: still {detail['status']} after {seconds} s"
        time.sleep(0.1)


def test_the_form_comes_from_the_settings_schema(trainer):
    form = trainer.json("/api/train")
    by_name = {s["name"]: s for s in form["settings"]}
    expected = ["model", "epochs", "batch_size", "optimizer", "lr", "lr_schedule", "momentum", "weight_decay",
                "dropout", "dropout_at", "train_subset", "seed", "augment_shift"]
    assert [s["name"] for s in form["settings"] if s["name"] != "engine"] == expected
    for name, s in by_name.items():
        spec = SETTINGS[name]
        assert (s["default"], s["low"], s["high"], s["help"]) == (spec.default, spec.low, spec.high, spec.help)
        assert s["accepted"] == spec.accepted()
    assert form["models"] == ["cnn", "mlp", "lenet5", "cnn-bn", "tiny.toml"]
    assert form["caps"] == {"epochs": 5, "train_images": 5000}
    assert form["folder"] == "runs" and form["token_required"] is False and form["training"] is None


BAD = [
    (b"{not json", 400, "not JSON"),
    (b"\xff\xfe", 400, "not JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (b'"cnn"', 400, "JSON object"),
    (b'{"lr": -1}', 400, "lr must be a finite number > 0, got -1.0"),
    (b'{"lr": NaN}', 400, "lr must be"),
    (b'{"lr": 1e999}', 400, "lr must be"),
    (b'{"epochs": 1.5}', 400, "epochs must be int"),
    (b'{"epochs": 0}', 400, "epochs must be an integer >= 1"),
    (b'{"epochs": 1000000000}', 400, "epochs must be at most 5"),
    (b'{"epochs": 2, "train_subset": 2000000}', 400, "train_subset must be at most 5000"),
    (b'{"epochs": 2}', 400, "train_subset must be at most 5000"),  # all 60 000 images
    (b'{"batch_size": "100"}', 400, "batch_size must be int"),
    (b'{"lr": 1' + b"0" * 400 + b"}", 400, "lr is too large: an integer of 401 digits"),
    (b'{"seed": -1}', 400, "seed must be an integer >= 0"),
    (b'{"model": {"layers": []}}', 400, "model must be str"),
    (b'{"dataset": "fashion-mnist", "data_dir": null}', 400, "data_dir cannot be set"),
    (b'{"optimizer": "rmsprop"}', 400, "optimizer must be one of"),
    (b'{"colour": "blue"}', 400, "colour is not a training setting"),
    (b'{"data_dir": "/etc"}', 400, "data_dir cannot be set"),
    (b'{"model": "mlp", "init_from": "/etc/model.npz"}', 400, "init_from cannot be set"),
    (b'{"model": "mlp", "plan": "/etc/passwd"}', 400, "plan must be measure or built-in from the page"),
    (b'{"model": "../../etc/passwd.toml"}', 400, "architecture file served here (tiny.toml)"),
    (b'{"model": "mlp", "dropout": 0.5, "dropout_at": "before-pool"}', 400, "dropout_at must be before-fc"),
    (b'{"model": "mlp", "epochs": 1, "train_subset": 4000, "val_split": 0.9999}', 400, "val_split"),
]


def test_bad_requests_are_one_line_400s_and_write_nothing(trainer):
    before = sorted(os.listdir(trainer.folder))
    for body, status, words in BAD:
        got, answer = post(trainer, "/api/train", body=body)
        assert got == status, (body, got, answer)
        assert words in answer["error"] and "\n" not in answer["error"], (body, answer)
    assert sorted(os.listdir(trainer.folder)) == before, "nothing was written"
    assert trainer.json("/api/train")["training"] is None


def test_writing_requests_are_json_from_this_page_only(trainer):
    before = sorted(os.listdir(trainer.folder))
    status, answer = post(trainer, "/api/train", QUICK, headers={"Origin": "http://evil.example"})
    assert status == 403 and "evil.example" in answer["error"]
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        status, _, body = trainer.request("POST", "/api/train", body=json.dumps(QUICK),
                                          headers={"Content-Type": content_type})
        assert status == 415 and "application/json" in json.loads(body)["error"]
    status, _, body = trainer.request("POST", "/api/train", body=b"{}" + b" " * 20000,
                                      headers={"Content-Type": "application/json"})
    assert status == 413
    assert post(trainer, "/api/runs/nope/stop", {})[0] == 404
    assert post(trainer, "/api/runs/..%2F..%2Fetc/resume", {})[0] == 404
    assert trainer.get("/api/runs/nope/events")[0] == 404
    assert sorted(os.listdir(trainer.folder)) == before


def test_a_run_from_the_page_is_an_ordinary_run_folder(trainer):
    status, answer = post(trainer, "/api/train", {**QUICK, "model": "tiny.toml", "lr": 0.1},
                          headers={"Origin": f"http://{trainer.host}:{trainer.port}"})  # the page's own origin
    assert status == 202, answer
    run = answer["run"]
    stream = events(trainer, run)
    names = [name for name, _ in stream]
    assert {"losses", "epochs", "snapshot", "progress"} <= set(names) and names[-1] == "end"
    end = stream[-1][1]
    assert end["status"] == "completed" and end["summary"]["epochs"] == 1 and end["diverged_step"] is None
    steps = [point[0] for name, data in stream if name == "losses" for point in data["points"]]
    assert steps == list(range(1, 31)), "every step's loss, once, in order"
    assert [e for name, data in stream if name == "epochs" for e in data["history"]][-1]["epoch"] == 1
    assert stream[-2][0] == "progress" and stream[-2][1]["step"] == 30 and stream[-2][1]["steps"] == 30

    detail = trainer.json(f"/api/runs/{run}")
    assert detail["status"] == "completed" and len(detail["history"]) == 1
    assert [s for s, _ in detail["losses"]] == list(range(1, 31)) and all(np.isfinite(v) for _, v in detail["losses"])
    record = RunFolder(os.path.join(trainer.folder, run)).read()  # what evaluate, compare and resume read
    assert record.status == "completed" and record.config["lr"] == 0.1 and record.config["model_layers"]
    assert record.config["train_subset"] == 600 and record.config["model"].endswith("tiny.toml")
    # A finished run's stream gives everything at once, and ends.
    again = events(trainer, run)
    assert [p for name, data in again if name == "losses" for p in data["points"]] == detail["losses"]


def test_stop_then_resume_continues_bit_identically(trainer, tmp_path):
    settings = {"model": "cnn", "epochs": 3, "train_subset": 500, "batch_size": 10, "seed": 3}
    status, answer = post(trainer, "/api/train", settings)
    assert status == 202, answer
    run = answer["run"]
    status, answer = post(trainer, "/api/train", QUICK)
    assert status == 409 and run in answer["error"], "one run at a time"
    status, answer = post(trainer, f"/api/runs/{run}/resume", {})
    assert status == 409, answer
    detail = wait_for(trainer, run, lambda d: len(d["history"]) >= 1 or d["status"] != "running")
    assert detail["status"] == "running" and detail["losses"], detail["status"]
    status, answer = post(trainer, f"/api/runs/{run}/stop", {})
    assert status == 200 and answer["status"] == "interrupted", answer
    stopped = trainer.json(f"/api/runs/{run}")
    assert stopped["status"] == "interrupted" and stopped["summary"]["checkpoint"] == "checkpoint.npz"
    assert stopped["summary"]["signal"] == "SIGINT" and 1 <= stopped["summary"]["epochs"] < 3
    assert post(trainer, f"/api/runs/{run}/stop", {})[0] == 409, "it is not training any more"

    assert post(trainer, f"/api/runs/{run}/resume", {"lr": 1})[0] == 400, "a resumed run keeps its settings"
    assert post(trainer, f"/api/runs/{run}/resume", {"epochs": 50})[0] == 400, "the caps hold for resuming too"
    status, answer = post(trainer, f"/api/runs/{run}/resume", {})
    assert status == 202 and answer["run"] == run
    end = events(trainer, run)[-1][1]
    assert end["status"] == "completed"
    detail = trainer.json(f"/api/runs/{run}")
    assert [s for s, _ in detail["losses"]] == list(range(1, 151)), "the repeated epoch's steps once"

    reference = tmp_path / "reference"
    run_training(TrainConfig(**settings), reference, progress=False, log=lambda *a: None)
    ours, theirs = RunFolder(os.path.join(trainer.folder, run)), RunFolder(reference)
    strip = [(h.epoch, h.train_loss, h.train_acc, h.test_loss, h.test_acc) for h in ours.read_history()]
    assert strip == [(h.epoch, h.train_loss, h.train_acc, h.test_loss, h.test_acc) for h in theirs.read_history()]
    assert ours.read_losses() and [r[:3] for r in ours.read_losses()] == [r[:3] for r in theirs.read_losses()]
    with open(ours.file("model.npz"), "rb") as a, open(theirs.file("model.npz"), "rb") as b:
        assert a.read() == b.read(), "the resumed run's model is the uninterrupted run's, bit for bit"


def test_a_diverged_run_says_where(trainer):
    status, answer = post(trainer, "/api/train", {**QUICK, "lr": 1e6, "optimizer": "sgd"})
    assert status == 202, answer
    end = events(trainer, answer["run"])[-1][1]
    assert end["status"] == "diverged" and "diverged" in end["summary"]["message"]
    at = end["summary"]["diverged_at"]
    assert end["diverged_step"] == (at["epoch"] - 1) * 30 + (at["step"] or 30)


def test_runs_the_command_line_trains_show_up_while_they_train(trainer):
    out = os.path.join(trainer.folder, "from-the-cli")
    proc = subprocess.Popen([sys.executable, "-m", "npconv", "train", "--model", "mlp", "--epochs", "3",
                             "--train-subset", "3000", "--batch-size", "10", "--out", out, "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            rows = {r["name"]: r for r in trainer.json("/api/collections/runs")["runs"]}
            if "from-the-cli" in rows and rows["from-the-cli"]["status"] == "running":
                break
            assert proc.poll() is None and time.monotonic() < deadline, f"never seen running: {proc.stderr.read()}"
            time.sleep(0.05)
        run = next(r["id"] for r in trainer.json("/api/runs")["runs"] if r["name"] == "from-the-cli")
        wait_for(trainer, run, lambda d: d["status"] == "running" and len(d["losses"]) > 10)
        assert post(trainer, f"/api/runs/{run}/stop", {})[0] == 409, "only runs this server trains are stopped here"
        done = wait_for(trainer, run, lambda d: d["status"] != "running")
        assert done["status"] == "completed" and len(done["history"]) == 3 and len(done["losses"]) == 900
    finally:
        proc.kill()
        proc.wait()


def test_beyond_loopback_writing_needs_the_token(tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    proc, client = start_server([str(folder)], "--host", "0.0.0.0")
    try:
        line = proc.stdout.readline()
        assert "token" in line, line
        token = line.split()[-1]
        assert post(client, "/api/train", {"lr": -1})[0] == 403
        assert post(client, "/api/train", {"lr": -1}, headers={"X-Npconv-Token": token + "x"})[0] == 403
        status, answer = post(client, "/api/train", {"lr": -1}, headers={"X-Npconv-Token": token})
        assert status == 400 and answer["error"].startswith("lr must be"), "past the token, the settings are checked"
        assert client.json("/api/train")["token_required"] is True
    finally:
        stop_server(proc)
    assert os.listdir(folder) == []


def test_ctrl_c_on_the_server_stops_its_run_cleanly(tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    proc, client = start_server([str(folder)])
    try:
        status, answer = post(client, "/api/train", {"model": "cnn", "epochs": 5, "train_subset": 2000,
                                                     "batch_size": 10})
        assert status == 202, answer
        run = answer["run"]
        wait_for(client, run, lambda d: len(d["history"]) >= 1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            stop_server(proc)
    summary = RunFolder(folder / run).read_summary()
    assert summary.status == "interrupted" and summary.signal == "SIGINT" and summary.checkpoint == "checkpoint.npz"
    assert RunFolder(folder / run).read_checkpoint().epoch == summary.epochs >= 1
    assert not RunFolder(folder / run).training_now()


def test_the_page_never_downloads_a_dataset(tmp_path, monkeypatch):
    from npconv.errors import SettingError
    from npconv.serve import training
    from npconv.serve.catalog import Catalog

    (tmp_path / "runs").mkdir()
    trainer = training.Trainer(Catalog.from_paths([tmp_path / "runs"]))
    monkeypatch.setattr(training, "is_available", lambda name: name == "mnist")
    assert trainer.config({"dataset": "mnist", "train_subset": 100}).dataset == "mnist"
    with pytest.raises(SettingError, match="fashion-mnist is not on this machine, and the page never downloads"):
        trainer.config({"dataset": "fashion-mnist", "train_subset": 100})


def test_any_json_is_a_setting_error_or_a_config(tmp_path):
    """Whatever JSON a request holds, checking it raises an NpconvError (a 400) or gives a config: never a bug."""
    from hypothesis import given, settings, strategies as st

    from npconv.errors import NpconvError
    from npconv.serve import training
    from npconv.serve.catalog import Catalog

    (tmp_path / "runs").mkdir()
    trainer = training.Trainer(Catalog.from_paths([tmp_path / "runs"]))
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
    values = scalars | st.lists(scalars, max_size=3) | st.dictionaries(st.text(max_size=5), scalars, max_size=2)
    names = st.sampled_from([*SETTINGS, "model_layers", "x"])

    @settings(max_examples=100, deadline=None)
    @given(st.dictionaries(names, values, max_size=4) | values)
    def check(body):
        try:
            trainer.config(body)
        except NpconvError:
            pass

    check()
