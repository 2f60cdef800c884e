"""What ``npconv serve`` serves: ids, the kinds of folders, and the checks that keep every read inside them."""

import os
import shutil

import pytest

from npconv.errors import NpconvError
from npconv.serve.catalog import Catalog, inside


def test_every_kind_of_path(served):
    catalog = Catalog.from_paths([served.run, served.sweep, served.study, served.model])
    assert catalog.runs["cnn-run"].kind == "run" and catalog.runs["solo-model.npz"].kind == "model"
    assert catalog.runs["solo-model.npz"].name == "solo/model.npz"
    assert {c.id: c.kind for c in catalog.collections.values()} == {"sweep": "sweep", "study": "study"}
    assert len(catalog.collections["sweep"].run_ids) == 2
    assert all(catalog.runs[i].collection == "study" for i in catalog.collections["study"].run_ids)
    assert catalog.default_run().id == "cnn-run"
    assert catalog.runs["cnn-run"].status() == catalog.runs["solo-model.npz"].status() == "completed"


def test_two_folders_of_the_same_name_get_two_ids(served, tmp_path):
    for parent in ("a", "b"):
        shutil.copytree(served.run, tmp_path / parent / "run", ignore=shutil.ignore_patterns(".lock"))
    catalog = Catalog.from_paths([tmp_path / "a" / "run", tmp_path / "b" / "run"])
    assert list(catalog.runs) == ["run", "run~2"]
    assert catalog.run("run~2").path == str(tmp_path / "b" / "run")
    assert catalog.run("../run") is None and catalog.run(None) is None


def test_paths_that_serve_nothing_are_errors(tmp_path, served):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    for path, words in [(tmp_path / "missing", "no such"), (tmp_path / "notes.txt", "not a run folder")]:
        with pytest.raises(NpconvError, match=words):
            Catalog.from_paths([path])
    with pytest.raises(NpconvError, match="nothing to serve"):
        Catalog.from_paths([])


def test_an_empty_folder_is_served_for_runs_to_come(tmp_path):
    (tmp_path / "empty").mkdir()
    catalog = Catalog.from_paths([tmp_path / "empty"])
    assert list(catalog.collections) == ["empty"] and catalog.runs == {}


def test_files_are_served_only_from_inside_the_folders(served):
    catalog = Catalog.from_paths([served.study])
    study = catalog.collections["study"]
    assert study.figure("curves.png") == os.path.join(served.study, "figures", "curves.png")
    for name in ("leak.png", "../REPORT.md", "..", "/etc/passwd", "curves", ".curves.png", "missing.png"):
        assert study.figure(name) is None, name
    assert "zz-linked-run" not in catalog.runs, "a run folder linked in from outside is not served"
    assert inside(served.study, study.report_file)
    assert not inside(served.study, os.path.join(served.study, "figures", "leak.png"))


def test_a_run_file_linked_out_of_the_folder_is_not_read(served, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(served.run, run, ignore=shutil.ignore_patterns(".lock"))
    (run / "summary.json").unlink()
    os.symlink(os.path.join(served.run, "summary.json"), run / "summary.json")
    entry = Catalog.from_paths([run]).runs["run"]
    assert entry.folder() is None and entry.file("summary.json") is None
    assert entry.model_file == str(run / "model.npz")


def test_runs_added_later_appear_on_refresh(served, tmp_path):
    sweep = tmp_path / "sweep"
    shutil.copytree(served.sweep, sweep)
    catalog = Catalog.from_paths([sweep])
    before = list(catalog.runs)
    shutil.copytree(served.run, sweep / "runs" / "later", ignore=shutil.ignore_patterns(".lock"))
    (sweep / "runs" / "started").mkdir()
    (sweep / "runs" / "started" / "config.json").write_text((sweep / "runs" / "later" / "config.json").read_text())
    catalog.refresh()
    assert list(catalog.runs) == before + ["later", "started"]
    assert catalog.runs["started"].status() == "pending" and catalog.runs["started"].model_file is None
    (sweep / "runs" / "started" / "error.txt").write_text("boom")
    assert catalog.runs["started"].status() == "failed"
