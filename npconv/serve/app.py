"""The web application: the page's files and the JSON API under ``/api/`` (Starlette).

=====================================================  =====================================================
``GET  /``                                             the page (Draw, Model, Mistakes, Runs views)
``GET  /api/runs``                                     every served run and folder of runs
``GET  /api/runs/{run}``                               one run: settings, summary, history, health,
                                                       architecture, first-layer filters
``GET  /api/runs/{run}/curves.png``                    its training curves as ``npconv train`` plotted them
``POST /api/predict?run={run}&activations=1``          classify the image in the body (PNG or JPEG)
``GET  /api/runs/{run}/confusion``                     the test set's confusion matrix
``GET  /api/runs/{run}/confusion/{true}/{predicted}``  the test images of one cell, with probabilities
``GET  /api/collections/{collection}``                 a folder's runs, the settings that vary
``GET  /api/collections/{collection}/report``          a study's REPORT.md as HTML
``GET  /api/collections/{collection}/figures/{name}``  one of the study's figures
=====================================================  =====================================================

and the Train view's routes (:mod:`npconv.serve.training`): start, follow, stop and resume runs.

Safety (the server runs on the user's machine, next to their files):

* runs and folders are named in URLs by id only (:mod:`npconv.serve.catalog`): unknown ids, and files
  outside the served folders, are 404;
* request bodies are capped at :data:`MAX_BODY` bytes (413), images in pixels before decoding
  (:func:`npconv.data.images.open_image`, 400);
* nothing is written to disk but by the Train view's requests (:mod:`npconv.serve.training`: a run folder in
  the served folder of runs, JSON bodies from this page only, a token beyond loopback); models and test
  sets are only read (datasets are never downloaded);
* every error is a JSON object ``{"error": "..."}`` with a 4xx status; no traceback reaches the client;
* a request whose ``Host`` is not the server's own loopback name is refused (403) when serving on
  loopback, so a web page the user visits cannot reach the server by DNS rebinding; responses carry a
  Content-Security-Policy that allows only the server's own scripts, styles and images.
"""

import base64
import importlib.resources
import json
import math
import os
import threading

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..data import load_dataset
from ..data.images import ImageError
from ..errors import NpconvError
from ..inference import Classifier
from ..train.runfolder import CURVES_FILE
from ..train.settings import SETTINGS
from .mistakes import answer_test_set
from .network import architecture, classify, first_filters
from .report import render_report
from .training import Trainer, live_figures, losses_of
from .training import routes as training_routes

#: Largest request body accepted, in bytes (an image to classify).
MAX_BODY = 5 * 1024 * 1024
#: Content types ``POST /api/predict`` accepts.
IMAGE_TYPES = ("image/png", "image/jpeg")
#: Test images a confusion cell returns at most per request (``limit``).
MAX_CELL_IMAGES = 200

STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
    "draw.js": "text/javascript; charset=utf-8",
    "views.js": "text/javascript; charset=utf-8",
    "train.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def finite(obj):
    """``obj`` with every non-finite float replaced by None (JSON has no NaN or infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


class JSON(JSONResponse):
    """A JSON response: compact, non-finite numbers as null, the security headers."""

    def __init__(self, content, status_code=200):
        super().__init__(content, status_code, headers=SECURITY_HEADERS)

    def render(self, content):
        return json.dumps(finite(content), ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def not_found(what):
    raise HTTPException(404, f"{what} not found")


class Server:
    """The served catalog, and what is loaded from it on demand: models, test sets, test-set answers."""

    def __init__(self, catalog, max_body=MAX_BODY):
        self.catalog = catalog
        self.max_body = max_body
        self._models = {}    # model file path -> ((mtime, size), Classifier)
        self._datasets = {}  # (name, data_dir) -> Dataset
        self._answers = {}   # model file path -> ((mtime, size), Answers)
        self._lock = threading.Lock()
        self._answer_locks = {}

    # --- lookups ----------------------------------------------------------------------
    def run(self, run_id):
        return self.catalog.run(run_id) or not_found(f"run {run_id!r}")

    def collection(self, collection_id):
        return self.catalog.collection(collection_id) or not_found(f"folder of runs {collection_id!r}")

    def classifier(self, run):
        """The :class:`~npconv.inference.Classifier` of a run's model file, loaded once (again if the file changed)."""
        return self._loaded(run)[1]

    def _loaded(self, run):
        """``(stamp, classifier)``: the classifier as :meth:`classifier` gives it, and the file's stamp it was loaded
        at."""
        path = run.model_file
        if path is None:
            raise HTTPException(404, f"run {run.id!r} has no model file (it has not completed)")
        stamp = _stamp(path)
        with self._lock:
            cached = self._models.get(path)
            if cached is None or cached[0] != stamp:
                self._models[path] = cached = (stamp, Classifier(path))
        return cached

    def answers(self, run):
        """The run's model's answers on its test set, computed once per model file (in a worker thread)."""
        stamp, classifier = self._loaded(run)
        path = run.model_file
        with self._lock:
            lock = self._answer_locks.setdefault(path, threading.Lock())
        with lock:  # two requests for the same run's matrix compute it once
            cached = self._answers.get(path)
            if cached is None or cached[0] != stamp:
                cached = (stamp, answer_test_set(classifier, self.dataset(run, classifier.config)))
                self._answers[path] = cached
        return cached[1]

    def dataset(self, run, config):
        data_dir = None
        if run.kind == "run":
            data_dir = run.folder().read_config().get("data_dir") if run.folder() else None
        key = (config.get("dataset") or "mnist", data_dir)
        with self._lock:
            if key not in self._datasets:
                self._datasets[key] = load_dataset(key[0], data_dir, download=False)
            return self._datasets[key]

    # --- what the views show ------------------------------------------------------------
    def run_row(self, run):
        """One line of a table of runs. A run whose files cannot be read is listed with the ``error``."""
        return self._row(run)[0]

    def _row(self, run):
        """``(row, config, summary)``: the line, and the run's config and summary it was made from (each read once)."""
        row = {"id": run.id, "name": run.name, "kind": run.kind, "collection": run.collection,
               "has_model": run.model_file is not None}
        config = summary = None
        try:
            config, summary = self._fill_row(run, row)
        except NpconvError as e:
            row.update(status=row.get("status", "unreadable"), has_model=False, error=str(e))
        return row, config, summary

    def _fill_row(self, run, row):
        folder = run.folder()
        summary = folder.read_summary() if folder is not None else None
        row["status"] = summary.status if summary is not None else run.status()
        config = folder.read_config() if folder is not None else self.classifier(run).config if row["has_model"] else {}
        row.update(model=config.get("model"), dataset=config.get("dataset"), classes=config.get("classes"))
        if folder is not None:
            row["settings"] = {name: config.get(name) for name in SETTINGS if name in config}
            if summary is not None:
                row.update(epochs=summary.epochs, train_loss=summary.train_loss, train_acc=summary.train_acc,
                           test_loss=summary.test_loss, test_acc=summary.test_acc,
                           seconds_per_epoch=summary.seconds_per_epoch)
        if folder is not None and folder.training_now():  # no summary yet (or a stopped run's): the epochs so far
            row.update(status="running", **live_figures(folder))
        return config, summary

    def run_detail(self, run):
        detail, config, summary = self._row(run)
        if "error" in detail:
            raise NpconvError(detail["error"])
        folder = run.folder()
        if folder is not None:
            detail.update(config=config, summary=summary.to_json() if summary else None,
                          history=[vars(h) for h in folder.read_history()], health=folder.read_health(),
                          curves=run.file(CURVES_FILE) is not None)
            detail["losses"] = losses_of(run)
        if run.model_file:
            classifier = self.classifier(run)
            detail.update(model_config={k: v for k, v in classifier.config.items() if k != "format"},
                          classes=classifier.classes, architecture=architecture(classifier))
            filters = first_filters(classifier.network)
            if filters is not None:
                detail["filters"] = {"layer": filters[0], "weights": filters[1].tolist()}
        return detail


def _stamp(path):
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size


def _varying(rows):
    """The settings whose values differ between the rows, in the schema's order."""
    return [name for name in SETTINGS if len({repr(r.get("settings", {}).get(name)) for r in rows}) > 1]


async def read_body(request, limit):
    """The request body, at most ``limit`` bytes (413 beyond, before reading it all when the length is given)."""
    length = request.headers.get("content-length")
    too_large = HTTPException(413, f"the request body is larger than {limit} bytes")
    if length is not None:
        if not length.isdigit():
            raise HTTPException(400, "malformed Content-Length")
        if int(length) > limit:
            raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def _int_param(request, name, default, low, high):
    value = request.query_params.get(name)
    if value is None:
        return default
    if not value.isdigit() or not low <= int(value) <= high:
        raise HTTPException(400, f"{name} must be an integer from {low} to {high}, got {value!r}")
    return int(value)


def _flag(request, name):
    value = request.query_params.get(name, "0").lower()
    if value not in ("0", "1", "true", "false", "yes", "no", ""):
        raise HTTPException(400, f"{name} must be 0 or 1, got {value!r}")
    return value in ("1", "true", "yes")


def create_app(catalog, max_body=MAX_BODY, allowed_hosts=LOOPBACK_NAMES, trainer=None):
    """The Starlette application serving ``catalog`` (:class:`npconv.serve.catalog.Catalog`).

    ``allowed_hosts``: the ``Host`` names accepted (any port); None accepts every host.
    ``trainer``: the :class:`~npconv.serve.training.Trainer` of the Train view (default: one without a token).
    """
    server = Server(catalog, max_body)
    trainer = trainer if trainer is not None else Trainer(catalog)
    static = {name: importlib.resources.files(__package__).joinpath("static", name).read_bytes()
              for name in STATIC_FILES}

    async def page(request):
        return Response(static["index.html"], media_type=STATIC_FILES["index.html"], headers=SECURITY_HEADERS)

    async def static_file(request):
        name = request.path_params["name"]
        if name not in static:
            not_found(f"file {name!r}")
        return Response(static[name], media_type=STATIC_FILES[name], headers=SECURITY_HEADERS)

    def runs(request):
        catalog.refresh()
        default = catalog.default_run()
        collections = []
        for c in list(catalog.collections.values()):
            collections.append({"id": c.id, "name": c.name, "kind": c.kind, "runs": len(c.run_ids)})
        # list(...) copies in one step: another request's refresh may add runs meanwhile.
        return JSON({"runs": [server.run_row(r) for r in list(catalog.runs.values())], "collections": collections,
                     "default": default.id if default else None})

    def run_detail(request):
        return JSON(server.run_detail(server.run(request.path_params["run"])))

    def curves(request):
        path = server.run(request.path_params["run"]).file(CURVES_FILE) or not_found(CURVES_FILE)
        return _png(path)

    async def predict(request):
        run_id = request.query_params.get("run")
        run = server.run(run_id) if run_id is not None else catalog.default_run()
        if run is None:
            raise HTTPException(404, "no run with a model is served")
        want_activations = _flag(request, "activations")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in IMAGE_TYPES:
            raise HTTPException(415, f"send the image file as the body with Content-Type image/png or image/jpeg "
                                     f"(got {content_type or 'none'!r})")
        body = await read_body(request, server.max_body)
        classifier = await run_in_threadpool(server.classifier, run)
        drawing = await run_in_threadpool(classify, classifier, body, want_activations)
        return JSON(_prediction_json(run, classifier, drawing))

    def confusion(request):
        answers = server.answers(server.run(request.path_params["run"]))
        return JSON({"dataset": answers.dataset, "classes": answers.classes, "count": len(answers.labels),
                     "accuracy": answers.accuracy, "matrix": answers.matrix().tolist()})

    def cell(request):
        answers = server.answers(server.run(request.path_params["run"]))
        k = len(answers.classes)
        true, predicted = (_class_index(request.path_params[n], k) for n in ("true", "predicted"))
        limit = _int_param(request, "limit", 60, 1, MAX_CELL_IMAGES)
        offset = _int_param(request, "offset", 0, 0, 10**9)
        index = answers.cell(true, predicted)
        images = [{"index": int(i), "image": answers.images[i].tolist(),
                   "probabilities": answers.probabilities[i].tolist()} for i in index[offset : offset + limit]]
        return JSON({"true": true, "predicted": predicted, "count": len(index), "offset": offset, "images": images})

    def collection(request):
        c = server.collection(request.path_params["collection"])
        catalog.refresh()
        rows = [server.run_row(catalog.runs[i]) for i in list(c.run_ids)]
        return JSON({"id": c.id, "name": c.name, "kind": c.kind, "report": c.report_file is not None,
                     "varying": _varying(rows), "runs": rows})

    def report(request):
        c = server.collection(request.path_params["collection"])
        path = c.report_file or not_found(f"a report in {c.id!r}")
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        links = {f"runs/{catalog.runs[i].name}": f"#/model/{i}" for i in list(c.run_ids)}
        return JSON({"html": render_report(text, f"/api/collections/{c.id}/figures/", links)})

    def figure(request):
        c = server.collection(request.path_params["collection"])
        return _png(c.figure(request.path_params["name"]) or not_found("figure"))

    routes = [
        Route("/", page),
        Route("/static/{name}", static_file),
        Route("/api/runs", runs),
        Route("/api/runs/{run}", run_detail),
        Route("/api/runs/{run}/curves.png", curves),
        Route("/api/predict", predict, methods=["POST"]),
        Route("/api/runs/{run}/confusion", confusion),
        Route("/api/runs/{run}/confusion/{true}/{predicted}", cell),
        Route("/api/collections/{collection}", collection),
        Route("/api/collections/{collection}/report", report),
        Route("/api/collections/{collection}/figures/{name}", figure),
        *training_routes(server, trainer, JSON, finite, read_body),
    ]
    handlers = {HTTPException: _http_error, ImageError: _user_error(400), NpconvError: _user_error(422),
                Exception: _internal_error}
    app = Starlette(routes=routes, exception_handlers=handlers)
    return HostCheck(app, allowed_hosts)


def _png(path):
    with open(path, "rb") as f:
        return Response(f.read(), media_type="image/png", headers=SECURITY_HEADERS)


def _class_index(text, k):
    if not text.isdigit() or int(text) >= k:
        not_found(f"class {text!r}")
    return int(text)


def _prediction_json(run, classifier, drawing):
    prediction = drawing.prediction
    out = {"run": run.id, "prediction": prediction.index, "label": prediction.label,
           "probabilities": list(prediction.probabilities.values()), "not_sure": prediction.not_sure,
           "classes": classifier.classes, "input": drawing.image.tolist()}
    if drawing.layers is not None:
        out["activations"] = [{"layer": a.index, "type": a.type, "description": a.description,
                               "shape": list(a.values.shape), "kind": a.kind,
                               "min": float(a.values.min()), "max": float(a.values.max()),
                               "data": base64.b64encode(a.values.astype("<f4").tobytes()).decode("ascii")}
                              for a in drawing.layers]
    return out


async def _http_error(request, exc):
    detail = exc.detail
    if exc.status_code == 404 and detail == "Not Found":  # the router's own: no route matched
        detail = f"{request.url.path}: not found"
    elif exc.status_code == 405 and detail == "Method Not Allowed":
        detail = f"{request.method} is not allowed on {request.url.path}"
    return JSON({"error": detail}, exc.status_code)


def _user_error(status):
    async def handler(request, exc):
        return JSON({"error": str(exc)}, status)
    return handler


async def _internal_error(request, exc):
    return JSON({"error": f"internal error ({type(exc).__name__}); see the server's output"}, 500)


class HostCheck:
    """ASGI middleware: refuse (403) requests whose ``Host`` header is not one of ``allowed`` (None: any)."""

    def __init__(self, app, allowed):
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.allowed is not None:
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name not in self.allowed:
                response = JSON({"error": f"host {host!r} is not served here"}, 403)
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)
