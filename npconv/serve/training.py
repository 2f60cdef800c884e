"""The Train view's side of the server: start, follow, stop and resume runs from the page.

=====================================================  =====================================================
``GET  /api/train``                                    the form: each setting's type, default, range and
                                                       help (from the settings schema), the models, the
                                                       caps, the run training now, whether a token is needed
``POST /api/train``                                    start a run (a JSON object of settings): 202
                                                       ``{"run": RUN}``; 400 a bad setting, 409 busy
``POST /api/runs/{run}/stop``                          stop the run this server trains (as Ctrl-C)
``POST /api/runs/{run}/resume``                        continue it from its checkpoint (``{"epochs": N}``
                                                       optional): 202 ``{"run": RUN}``
``GET  /api/runs/{run}/events``                        Server-Sent Events: the run as it trains
=====================================================  =====================================================

A run started here is an ordinary run folder (:func:`npconv.train.run_training`) in the first folder of runs
the server was given, trained in a worker process (:mod:`npconv.serve.worker`), one at a time. The run folder
is the one source of truth: the event stream reads its files (``losses.csv``, ``history.csv``,
``health.csv``, ``snapshot.npz``, ``summary.json``, its lock) every :data:`POLL_SECONDS`, so it follows a run
started by ``npconv train`` or a sweep just as well, and a reload or a second tab gets everything so far.

Events (each ``data`` is a JSON object):

``losses``    ``{"points": [[step, loss], ...]}``: the step losses since the last event (all at first)
``epochs``    ``{"history": [...], "health": [...], "advice": [...]}``: every epoch so far, when one ends
``snapshot``  ``{"step", "epoch", "layer", "weight", "image", "maps"}``: the first convolution's filters
              and their feature maps of a fixed test image (:mod:`npconv.train.live`)
``progress``  ``{"status", "epoch", "epochs", "step", "steps", "steps_per_epoch", "steps_per_second",
              "seconds_left"}``
``end``       ``{"status", "summary", "diverged_step"}``: the run is not training (any more); the stream ends

Writing requests (start, stop, resume) are refused unless they are JSON (415), come from this server's own
page or no page at all (a foreign ``Origin``: 403), and -- when a token is set (always when serving beyond
loopback) -- carry it in the ``X-Npconv-Token`` header (403). A request may not ask for more than the
server's caps (``--max-epochs``, ``--max-train-images``); no setting names a path, but ``model`` may name an
architecture file (``.toml``) that lies in a served folder.
"""

import asyncio
import hmac
import json
import math
import multiprocessing
import os
import signal
import threading

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import StreamingResponse
from starlette.routing import Route

from ..data.datasets import is_available
from ..errors import NpconvError, SettingError
from ..models import MODELS
from ..train.health import new_advice
from ..train.run import default_out_dir
from ..train.runfolder import (CONFIG_FILE, HEALTH_FILE, HISTORY_FILE, LOSSES_FILE, SNAPSHOT_FILE, SUMMARY_FILE,
                               RunFolder, read_losses)
from ..train.settings import MODEL_DEFAULTS, SETTINGS, make_config
from .catalog import inside
from .worker import train_in_process

#: The settings the form shows, in this order.
FORM_SETTINGS = ["model", "epochs", "batch_size", "optimizer", "lr", "lr_schedule", "momentum", "weight_decay",
                 "dropout", "dropout_at", "train_subset", "seed", "augment_shift", "engine"]
#: Settings a request may not give: they name paths on the server's machine.
PATH_SETTINGS = ("data_dir", "init_from")
#: The engine plans a request may ask for (a plan file would name a path on the server's machine).
PLANS = ("measure", "built-in")
#: Default caps on one request: epochs, and training images (a whole training set is 60 000).
MAX_EPOCHS = 30
MAX_TRAIN_IMAGES = 60_000
#: Largest integer a request may give for a setting (beyond it, no setting's value; 2**53: exact as a float).
MAX_INTEGER = 2**53
#: Largest JSON body of a writing request, in bytes.
MAX_JSON = 16 * 1024
#: How often the event stream looks at the run folder, in seconds.
POLL_SECONDS = 0.5
#: How long a new worker may take to load the data and write config.json before the request gives up.
START_SECONDS = 120
#: How long a stopped worker may take to write its summary and end.
STOP_SECONDS = 60
TOKEN_HEADER = "x-npconv-token"


class Busy(Exception):
    """Another run started here is still training (409)."""


class Trainer:
    """The runs this server trains: at most one at a time, each in its own worker process.

    ``folder``: the :class:`~npconv.serve.catalog.Collection` new runs go into (None: the page cannot start
    runs, but still follows, stops and resumes served runs).
    """

    def __init__(self, catalog, *, token=None, max_epochs=MAX_EPOCHS, max_train_images=MAX_TRAIN_IMAGES):
        self.catalog = catalog
        self.token = token
        self.max_epochs = max_epochs
        self.max_train_images = max_train_images
        self.folder = next((c for c in catalog.collections.values() if c.kind == "folder"), None)
        self._context = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._job = None  # (process, run folder path) of the run training now

    # --- what the form offers ---------------------------------------------------------------
    def model_files(self):
        """``{name: path}`` of the architecture files (``*.toml``) directly in the served folders of runs."""
        found = {}
        for c in list(self.catalog.collections.values()):
            try:
                names = sorted(os.listdir(c.path))
            except OSError:
                continue
            for name in names:
                path = os.path.join(c.path, name)
                if name.endswith(".toml") and not name.startswith(".") and os.path.isfile(path) \
                        and inside(c.root, path):
                    found.setdefault(name, path)
        return found

    def form(self):
        settings = []
        for name in FORM_SETTINGS:
            spec = SETTINGS[name]
            settings.append({"name": name, "kind": spec.kind.__name__, "default": spec.default,
                             "optional": spec.optional, "choices": list(spec.choices) if spec.choices else None,
                             "low": spec.low, "high": spec.high, "low_open": spec.low_open,
                             "high_open": spec.high_open, "help": spec.help, "accepted": spec.accepted()})
        return {"settings": settings, "models": [*MODELS, *self.model_files()], "model_defaults": MODEL_DEFAULTS,
                "caps": {"epochs": self.max_epochs, "train_images": self.max_train_images},
                "folder": self.folder.name if self.folder else None, "token_required": self.token is not None,
                "training": self.training_id()}

    # --- checks -------------------------------------------------------------------------------
    def check_request(self, request):
        """403 for a foreign Origin or a missing or wrong token, 415 for a body that is not JSON."""
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host', '')}":
            raise HTTPException(403, f"requests from {origin} may not start or stop runs here")
        if self.token is not None:
            given = request.headers.get(TOKEN_HEADER, "")
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                raise HTTPException(403, "this server needs its token (printed when it started) in the "
                                         "X-Npconv-Token header to start or stop runs")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise HTTPException(415, f"send a JSON object with Content-Type application/json "
                                     f"(got {content_type or 'none'!r})")

    def config(self, settings):
        """The :class:`~npconv.train.settings.TrainConfig` of a request's settings, checked as ``npconv train``
        checks them, and against the caps; :class:`SettingError` naming the setting."""
        if not isinstance(settings, dict):
            raise SettingError("settings", f"must be a JSON object of settings, got {_kind(settings)}")
        settings = dict(settings)
        for name in PATH_SETTINGS:
            if name in settings:
                raise SettingError(name, "cannot be set from the page (it names a path on the server)")
        if "plan" in settings and settings["plan"] not in PLANS:
            raise SettingError("plan", f"must be {' or '.join(PLANS)} from the page (a plan file names a path on the "
                                       "server)")
        for name, value in settings.items():  # beyond any setting's range, and too large to become a float
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INTEGER:
                raise SettingError(name, f"is too large: an integer of {len(str(abs(value)))} digits")
        model = settings.get("model")
        if isinstance(model, str) and model not in MODELS:
            files = self.model_files()
            if model not in files:
                raise SettingError("model", f"must be one of {', '.join(MODELS)}, or an architecture file "
                                            f"served here ({', '.join(files) or 'none is'}), got {model!r}")
            settings["model"] = files[model]
        config = make_config(settings)
        config.validate()
        self.check_caps(config.epochs, config.train_subset)
        if not is_available(config.dataset):
            raise SettingError("dataset", f"{config.dataset} is not on this machine, and the page never downloads "
                                          f"a dataset (npconv train --dataset {config.dataset} does, once)")
        return config

    def check_caps(self, epochs, train_subset=None):
        if epochs is not None and epochs > self.max_epochs:
            raise SettingError("epochs", f"must be at most {self.max_epochs} for a run started from the page "
                                         f"(npconv serve --max-epochs), got {epochs}")
        images = train_subset if train_subset is not None else MAX_TRAIN_IMAGES
        if images > self.max_train_images:
            raise SettingError("train_subset", f"must be at most {self.max_train_images} for a run started from "
                                               f"the page (npconv serve --max-train-images), got "
                                               f"{'all' if train_subset is None else train_subset}")

    # --- the worker -------------------------------------------------------------------------------
    def training_id(self):
        """The id of the run training in this server's worker, or None."""
        with self._lock:
            job = self._job
            if job is None or not job[0].is_alive():
                return None
        run = self.run_at(job[1])
        return run.id if run else None

    def run_at(self, path):
        real = os.path.realpath(path)
        self.catalog.refresh()
        return next((r for r in list(self.catalog.runs.values()) if os.path.realpath(r.path) == real), None)

    def launch(self, job, path):
        """Start a worker on ``job``; wait until it has written ``config.json`` (or failed). Returns the run."""
        with self._lock:
            if self._job is not None and self._job[0].is_alive():
                if RunFolder(self._job[1]).training_now():
                    raise Busy()
                self._job[0].join(10)  # its run has ended (the folder is free): the process is ending too
                if self._job[0].is_alive():
                    raise Busy()
            parent, child = self._context.Pipe(duplex=False)
            process = self._context.Process(target=train_in_process, args=(job, child), daemon=True,
                                            name="npconv-train")
            process.start()
            child.close()
            self._job = (process, path)
        try:
            message = parent.recv() if parent.poll(START_SECONDS) else None
        except EOFError:  # it ended without a word
            message = None
        if message is None or message[0] != "started":
            if process.is_alive():
                process.kill()
            process.join(5)
            with self._lock:
                self._job = None
            if message is not None and message[0] == "error":
                raise NpconvError(message[1])
            raise NpconvError("the training process ended before the run started (see the server's output)")
        run = self.run_at(path)
        if run is None:  # the folder lies where the catalog does not look: cannot happen for our own folder
            raise NpconvError(f"{path}: the run started but is not served")
        return run

    def start(self, settings):
        config = self.config(settings)
        if self.folder is None:
            raise NpconvError("this server has no folder of runs to train into: serve one (npconv serve runs/)")
        out_dir = default_out_dir(config, root=self.folder.path)
        return self.launch({"settings": _settings_of(config), "out_dir": out_dir}, out_dir)

    def resume(self, run, body):
        if not isinstance(body, dict) or set(body) - {"epochs"}:
            raise SettingError("settings", "a resumed run keeps its settings: give nothing, or only epochs")
        epochs = body.get("epochs")
        if epochs is not None:
            SETTINGS["epochs"].check(epochs)
        folder = run.folder()
        if folder is None:
            raise NpconvError(f"{run.id} is a model file, not a run folder: it cannot be resumed")
        config = folder.read_config()
        self.check_caps(epochs or config.get("epochs"), config.get("train_subset"))
        return self.launch({"resume": folder.path, "epochs": epochs}, folder.path)

    def stop(self, run):
        """SIGINT to the worker training ``run`` (as Ctrl-C); waits until it has written its summary."""
        with self._lock:
            job = self._job
        if job is None or not job[0].is_alive() or os.path.realpath(job[1]) != os.path.realpath(run.path):
            return False
        os.kill(job[0].pid, signal.SIGINT)
        job[0].join(STOP_SECONDS)
        return True

    def shutdown(self):
        """Stop the run training now, as Ctrl-C does (the server is stopping)."""
        with self._lock:
            job = self._job
        if job is not None and job[0].is_alive():
            os.kill(job[0].pid, signal.SIGINT)
            job[0].join(STOP_SECONDS)
            if job[0].is_alive():
                job[0].terminate()
                job[0].join(5)


def _settings_of(config):
    """The settings of a config as a dict the worker makes the same config from."""
    return {name: getattr(config, name) for name in SETTINGS}


def _kind(value):
    return {list: "a list", str: "a string", type(None): "null", bool: "true or false"}.get(type(value), "a number")


# --- following a run ------------------------------------------------------------------------------------


def steps_per_epoch(config):
    """The batches of one epoch of the run whose ``config.json`` is ``config`` (None if it does not say)."""
    size, batch = config.get("train_size"), config.get("batch_size")
    if not isinstance(size, int) or not isinstance(batch, int) or batch < 1:
        return None
    return math.ceil(size / batch)


def advice_so_far(history, health, num_classes):
    """The advice the run gave after each epoch, as it gave it (:func:`npconv.train.health.new_advice`)."""
    advice = []
    for stats in history:
        rows = [r for r in health if r["epoch"] == stats.epoch]
        advice += new_advice(advice, rows, stats, num_classes)
    return advice


def progress(status, config, losses, history):
    """The progress line's figures: epoch, step, speed (steps per second, over the last minute of steps), time
    left."""
    per_epoch = steps_per_epoch(config)
    epochs = config.get("epochs")
    step = losses[-1][0] if losses else (history[-1].epoch * per_epoch if history and per_epoch else 0)
    out = {"status": status, "epochs": epochs, "steps_per_epoch": per_epoch, "step": step,
           "epoch": losses[-1][1] if losses else len(history), "epochs_done": len(history),
           "steps": per_epoch * epochs if per_epoch and isinstance(epochs, int) else None,
           "steps_per_second": None, "seconds_left": None}
    recent = [row for row in losses[-400:] if row[3] >= losses[-1][3] - 60] if losses else []
    if len(recent) >= 2 and recent[-1][3] > recent[0][3]:
        out["steps_per_second"] = (recent[-1][0] - recent[0][0]) / (recent[-1][3] - recent[0][3])
        if out["steps"] and status == "running":
            out["seconds_left"] = max(0.0, (out["steps"] - step) / out["steps_per_second"])
    return out


def snapshot_json(arrays):
    rounded = {name: arrays[name].round(4).tolist() for name in ("weight", "image", "maps") if name in arrays}
    return {"step": int(arrays["step"]), "epoch": int(arrays["epoch"]), "layer": int(arrays["layer"]), **rounded}


class Follower:
    """What of a run folder has been sent on one event stream; :meth:`poll` gives what is new."""

    def __init__(self, run):
        self.run = run
        self.offset = 0          # in losses.csv
        self.inode = None        # of losses.csv: a resumed run rewrites it (drops the epoch it repeats)
        self.losses = []         # every (step, epoch, loss, time) read
        self.stamps = {}         # file name -> (mtime, size) when last sent
        self.last_progress = None

    def changed(self, name):
        path = self.run.file(name)
        stamp = None
        if path is not None:
            st = os.stat(path)
            stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self.stamps.get(name):
            return False
        self.stamps[name] = stamp
        return stamp is not None

    def poll(self):
        """``(events, over)``: the ``(name, data)`` events since the last poll; ``over`` once the run is not
        training."""
        folder = self.run.folder()
        if folder is None or self.run.file(CONFIG_FILE) is None:
            return [("end", {"status": self.run.status(), "summary": None, "diverged_step": None})], True
        status = self.run.status()  # first: whatever it says, the files read next are at least as new
        config = folder.read_config()
        events = []
        path = self.run.file(LOSSES_FILE)
        if path is not None:
            inode = os.stat(path).st_ino
            if self.inode is not None and inode != self.inode:  # rewritten: everything again
                self.offset, self.losses = 0, []
                events.append(("reset", {}))
            self.inode = inode
            rows, self.offset = read_losses(path, self.offset)
            if rows:
                self.losses += rows
                events.append(("losses", {"points": [[r[0], r[2]] for r in rows]}))
        history = folder.read_history()
        if self.changed(HISTORY_FILE) | self.changed(HEALTH_FILE):
            health = folder.read_health()
            events.append(("epochs", {"history": [vars(h) for h in history], "health": health,
                                      "advice": advice_so_far(history, health, config.get("num_classes") or 10)}))
        if self.changed(SNAPSHOT_FILE):
            snapshot = folder.read_snapshot()
            if snapshot is not None:
                events.append(("snapshot", snapshot_json(snapshot)))
        line = progress(status, config, self.losses, history)
        if line != self.last_progress:
            self.last_progress = line
            events.append(("progress", line))
        if status == "running":
            return events, False
        summary = folder.read_summary() if self.run.file(SUMMARY_FILE) else None
        events.append(("end", end_json(status, summary, config)))
        return events, True


def end_json(status, summary, config):
    """The ``end`` event: the status, the summary, and for a diverged run the step the curve marks."""
    diverged_step = None
    if summary is not None and summary.diverged_at:
        per_epoch = steps_per_epoch(config) or 0
        epoch, step = summary.diverged_at.get("epoch"), summary.diverged_at.get("step")
        if isinstance(epoch, int):
            diverged_step = (epoch - 1) * per_epoch + (step if isinstance(step, int) else per_epoch)
    return {"status": status, "summary": summary.to_json() if summary else None, "diverged_step": diverged_step}


def live_figures(folder):
    """A training run's line in a table of runs: the epochs done so far and the last one's figures."""
    history = folder.read_history()
    last = vars(history[-1]) if history else {}
    figures = {name: last.get(name) for name in ("train_loss", "train_acc", "test_loss", "test_acc")}
    return {"epochs": len(history), "seconds_per_epoch": None, **figures}


def losses_of(run):
    """The run's step losses as ``[[step, loss], ...]`` (for ``GET /api/runs/RUN``)."""
    path = run.file(LOSSES_FILE)
    return [[r[0], r[2]] for r in read_losses(path)[0]] if path else []


# --- the routes -----------------------------------------------------------------------------------------


def routes(server, trainer, to_json, finite, read_body):
    """The Train view's routes. ``server`` is the app's :class:`~npconv.serve.app.Server` (its run lookups);
    ``to_json(content, status)`` makes its JSON responses, ``finite(obj)`` replaces what JSON cannot hold,
    ``read_body(request, limit)`` reads a capped body: the app's own."""

    async def json_body(request):
        trainer.check_request(request)
        body = await read_body(request, MAX_JSON)
        try:
            return json.loads(body.decode("utf-8")) if body.strip() else {}
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise HTTPException(400, f"the body is not JSON ({str(e).splitlines()[0][:120]})") from None

    async def form(request):
        return to_json(await run_in_threadpool(trainer.form))

    async def launched(start, *args):
        """202 ``{"run": RUN}`` once ``start(*args)`` has a run training; 409 while another trains, 400 when the
        settings or the data cannot be used."""
        try:
            run = await run_in_threadpool(start, *args)
        except Busy:
            raise HTTPException(409, f"run {trainer.training_id()} is training; stop it or wait until it ends "
                                     "(one run at a time)") from None
        except NpconvError as e:
            raise HTTPException(400, str(e)) from None
        return to_json({"run": run.id}, 202)

    async def start(request):
        return await launched(trainer.start, await json_body(request))

    async def resume(request):
        run = server.run(request.path_params["run"])
        body = await json_body(request)
        if run.folder() is not None and await run_in_threadpool(run.folder().training_now):
            raise HTTPException(409, f"run {run.id} is training now")
        return await launched(trainer.resume, run, body)

    async def stop(request):
        run = server.run(request.path_params["run"])
        await json_body(request)
        if not await run_in_threadpool(trainer.stop, run):
            raise HTTPException(409, f"run {run.id} is not training in this server")
        return to_json({"run": run.id, "status": run.status()})

    async def events(request):
        run = server.run(request.path_params["run"])
        follower = Follower(run)

        async def stream():
            yield "retry: 2000\n\n"
            while True:
                try:
                    found, over = await run_in_threadpool(follower.poll)
                except NpconvError as e:  # a file being replaced, or damaged: say so, try again
                    found, over = [("problem", {"error": str(e)})], False
                for name, data in found:
                    yield f"event: {name}\ndata: {json.dumps(finite(data), allow_nan=False)}\n\n"
                if over:
                    return
                await asyncio.sleep(POLL_SECONDS)

        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no", "X-Content-Type-Options": "nosniff"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    return [
        Route("/api/train", form),
        Route("/api/train", start, methods=["POST"]),
        Route("/api/runs/{run}/stop", stop, methods=["POST"]),
        Route("/api/runs/{run}/resume", resume, methods=["POST"]),
        Route("/api/runs/{run}/events", events),
    ]


def new_token():
    """A token for the writing requests of a server that others can reach."""
    import secrets

    return secrets.token_urlsafe(18)


