"""What ``npconv serve`` serves: the runs, model files and folders of runs named on its command line.

Every run and folder gets an **id** when the server starts (its folder's name;
for a model file, its folder's and its own, ``best-model.npz``; with ``~2``,
``~3`` ... added when two share a name), and URLs
name runs and folders only by id. A URL never becomes a path: an id is looked up
in this catalog, and a file is served only if it is one of the few a view needs
(``curves.png`` of a run, ``REPORT.md`` and ``figures/*.png`` of a study) and
its real path -- symbolic links followed -- lies inside the folder or file that
was named on the command line (its **root**). Anything else is "not found".

Kinds of things served:

``run``         a run folder (``npconv train --out``): its settings, curves, health, summary and, once it
                completed, its ``model.npz``;
``model``       a model file on its own: no history, but everything a model alone can show;
``collection``  a folder of runs: a sweep or study folder (runs in ``runs/``) or the ``runs/`` folder
                ``npconv train`` writes into (empty, too: runs started from the page go into the first one).
                A study's ``REPORT.md`` is served with its figures.
                Its runs are looked up again on every listing, so runs a sweep finishes later appear.

Runs are read only through :class:`npconv.train.runfolder.RunFolder`.
"""

import os
import re
import threading
from dataclasses import dataclass, field

from ..errors import NpconvError
from ..experiments.report.markdown import FIGURE_DIR, REPORT_FILE
from ..experiments.results import RESULTS_CSV
from ..train.runfolder import (CONFIG_FILE, ERROR_FILE, HEALTH_FILE, HISTORY_FILE, LOSSES_FILE, MODEL_FILE,
                               SNAPSHOT_FILE, SUMMARY_FILE, RunFolder, find_runs, is_run_folder)

#: Names a served file may have (a figure of a study): no separators, no leading dot.
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\.png")


def inside(root, path):
    """Whether ``path``, with every symbolic link followed, is ``root`` or lies within it."""
    real_root, real = os.path.realpath(root), os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


@dataclass
class Run:
    """A served run folder or model file. ``path`` is the run folder, or the model file itself."""

    id: str
    kind: str  # "run" or "model"
    path: str
    root: str
    collection: str | None = None

    @property
    def name(self):
        """The folder's name; for a model file, its folder's and its own (``runs-best/model.npz``)."""
        if self.kind == "model":
            return "/".join(os.path.normpath(self.path).split(os.sep)[-2:])
        return os.path.basename(os.path.normpath(self.path))

    def file(self, name):
        """The path of the run's file ``name`` if it exists inside the served root, else None."""
        if self.kind == "model":
            return self.path if name == MODEL_FILE and self._readable(self.path) else None
        path = RunFolder(self.path).file(name)
        return path if self._readable(path) else None

    def _readable(self, path):
        return os.path.isfile(path) and inside(self.root, path)

    @property
    def model_file(self):
        return self.file(MODEL_FILE)

    def folder(self):
        """The :class:`RunFolder`, once every file it will read is known to lie inside the root (else None)."""
        if self.kind != "run":
            return None
        names = (CONFIG_FILE, SUMMARY_FILE, HISTORY_FILE, HEALTH_FILE, LOSSES_FILE, SNAPSHOT_FILE)
        if any(os.path.lexists(RunFolder(self.path).file(n)) and self.file(n) is None for n in names):
            return None
        return RunFolder(self.path)

    def status(self):
        """``running`` while a process trains in the folder (holds its lock); else ``completed``, ``diverged``
        or ``interrupted`` from its summary; ``failed`` (an ``error.txt``), else ``pending`` (not started, or
        killed before it wrote a summary); a model file is ``completed``."""
        if self.kind == "model":
            return "completed"
        folder = self.folder()
        if folder is not None and folder.training_now():
            return "running"
        summary = folder.read_summary() if folder and self.file(SUMMARY_FILE) else None
        if summary is not None:
            return summary.status
        return "failed" if self.file(ERROR_FILE) else "pending"


@dataclass
class Collection:
    """A served folder of runs. ``kind`` is ``study`` (it has a REPORT.md), ``sweep`` (a results.csv) or
    ``folder``."""

    id: str
    path: str
    run_ids: list = field(default_factory=list)

    @property
    def name(self):
        return os.path.basename(os.path.normpath(self.path))

    @property
    def root(self):
        return self.path

    @property
    def kind(self):
        if self.report_file:
            return "study"
        return "sweep" if os.path.isfile(os.path.join(self.path, RESULTS_CSV)) else "folder"

    @property
    def report_file(self):
        path = os.path.join(self.path, REPORT_FILE)
        return path if os.path.isfile(path) and inside(self.root, path) else None

    def figure(self, name):
        """The path of ``figures/<name>`` if it is a PNG file that lies inside the folder, else None."""
        if not _FILE_NAME.fullmatch(name):
            return None
        folder = os.path.join(self.path, FIGURE_DIR)
        try:
            listed = name in os.listdir(folder)
        except OSError:
            return None
        path = os.path.join(folder, name)
        return path if listed and os.path.isfile(path) and inside(self.root, path) else None


class Catalog:
    """Everything served, by id. Build it with :meth:`from_paths`."""

    def __init__(self):
        self.runs = {}          # id -> Run, in the order found
        self.collections = {}   # id -> Collection
        self._lock = threading.Lock()

    @classmethod
    def from_paths(cls, paths):
        """The catalog of the paths given to ``npconv serve``; :class:`NpconvError` for a path that is none of
        a run folder, a model file or a folder holding runs."""
        catalog = cls()
        for path in paths:
            path = os.path.abspath(os.fspath(path))
            if os.path.isfile(path) and path.endswith(".npz"):
                catalog._add_run("model", path, root=path)
            elif is_run_folder(path):
                catalog._add_run("run", path, root=path)
            elif os.path.isdir(path):
                collection = Collection(catalog._new_id(os.path.basename(path), catalog.collections), path)
                catalog.collections[collection.id] = collection
                catalog._scan(collection)  # an empty folder is served too: the Train view's runs go there
            elif not os.path.exists(path):
                raise NpconvError(f"{path}: no such run folder, model file or folder of runs")
            else:
                raise NpconvError(f"{path}: not a run folder, a model file (.npz) or a folder of runs")
        if not catalog.runs and not catalog.collections:
            raise NpconvError("nothing to serve: name run folders, model files or folders of runs")
        return catalog

    @staticmethod
    def _new_id(name, taken):
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "run"
        base = base.lstrip(".") or "run"
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}~{n}"
        return name

    def _add_run(self, kind, path, root, collection=None):
        run = Run("", kind, path, root, collection)
        run.id = self._new_id(run.name.replace("/", "-"), self.runs)
        self.runs[run.id] = run
        return run

    def _scan(self, collection):
        """Add the collection's runs not yet known. A run folder whose real path leaves the collection
        (a symbolic link out of it) is not served."""
        known = {os.path.realpath(self.runs[i].path) for i in collection.run_ids}
        for path in find_runs(collection.path):
            if inside(collection.root, path) and os.path.realpath(path) not in known:
                collection.run_ids.append(self._add_run("run", path, collection.root, collection.id).id)

    def refresh(self):
        """Look again for runs in every collection (a sweep may have added some since)."""
        with self._lock:
            for collection in self.collections.values():
                self._scan(collection)

    def run(self, run_id):
        """The :class:`Run` with this id, or None."""
        return self.runs.get(run_id) if isinstance(run_id, str) else None

    def collection(self, collection_id):
        return self.collections.get(collection_id) if isinstance(collection_id, str) else None

    def runs_with_models(self):
        return [r for r in list(self.runs.values()) if r.model_file]  # a copy: a refresh may add runs meanwhile

    def default_run(self):
        """The run the pages open on: the first one with a model, in the order of the command line."""
        candidates = self.runs_with_models()
        return candidates[0] if candidates else None
