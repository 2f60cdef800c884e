"""A study: several experiments described in one TOML file, run as one sweep, written up as one report.

The default study (``npconv/studies/default.toml``) replicates the course
study npconv grew out of; a copy of it, edited, describes another. A study
file holds::

    title = "..."              # the report's title
    seeds = [0, 1, 2]          # every setting is trained once per seed
    baseline_note = "..."      # optional: why the baseline settings are what they are (goes into the report)

    [baseline]                 # the settings every run starts from: any training setting
    model = "cnn"
    lr = 0.001
    ...

    [[section]]                # one per experiment, in report order
    id = "learning-rate"       # names the figure files; letters, digits and "-"
    kind = "sweep"             # curves | models | sweep | grid
    title = "Learning rate"
    ...                        # the kind's own keys (see SECTION_KEYS)

Section kinds:

``curves``  the baseline's training curves. ``study = {train_loss=, train_acc=, test_acc=}``
            (accuracies in %) are the published final figures; ``tolerance_pp``
            (default 1.0) is how close our test accuracy must be to count as reproduced.
``models``  ``models = ["cnn", "mlp"]`` compared: seconds per epoch, total time,
            accuracy, epochs to reach ``target_acc`` % (default 97), curves,
            convergence (``plateau_pp``, default 0.2: a model has converged from the
            epoch after which no epoch adds ``plateau_pp`` points of test accuracy).
``sweep``   ``vary = "lr"`` over ``values = [...]`` (``labels`` optional); ``study``
            rows ``[train loss, train acc %, test acc %]``, one per value, optional.
``grid``    ``batch_sizes = [...]`` x ``epochs = [...]``.
``ablation`` ``variants = [{label=, set={...}}, ...]`` (ways of implementing the
            same training, e.g. another weight initialization) x ``cases =
            [{label=, set={...}, study=...}, ...]`` (the settings the study
            reports, ``study`` its test accuracy in %). The report says which
            variants reproduce each case the study saw collapse to chance
            while keeping every other case within ``tolerance_pp`` (default
            2.0) points of the study's figure.

Every section may hold ``set = {dropout = 0.2}`` (settings on top of the
baseline for this section only) and ``study_says = "..."`` (the published
claim, quoted in the report). Two sections that need the same run share it:
a run is known by its key (:func:`npconv.experiments.sweep.run_key`).

With a constant learning rate the first E epochs of a run are exactly a run
of E epochs (same seed, same shuffles, same updates), so the grid trains one
run per batch size, for the largest number of epochs, and reads the smaller
ones from its history. With another schedule each cell is its own run.
"""

import json
import os
import re
import time
import tomllib
from dataclasses import dataclass, field
from importlib import resources

from ..errors import NpconvError, is_int, is_number
from ..train.settings import SETTINGS, make_config
from .report import write_report
from .sweep import run_sweep

DEFAULT_STUDY = "default.toml"
KINDS = ("curves", "models", "sweep", "grid", "ablation")
TOP_KEYS = {"title", "seeds", "baseline", "baseline_note", "section", "description"}
COMMON_KEYS = {"id", "kind", "title", "set", "study_says"}
SECTION_KEYS = {
    "curves": {"study", "tolerance_pp"},
    "models": {"models", "target_acc", "plateau_pp"},
    "sweep": {"vary", "values", "labels", "study"},
    "grid": {"batch_sizes", "epochs"},
    "ablation": {"variants", "cases", "tolerance_pp"},
}
ABLATION_ITEM_KEYS = {"variants": {"label", "set"}, "cases": {"label", "set", "study"}}
STUDY_FIGURES = ("train_loss", "train_acc", "test_acc")


@dataclass(frozen=True)
class Published:
    """The study's published figures for one setting (accuracies in %); None where it gives none."""

    train_loss: float | None = None
    train_acc: float | None = None
    test_acc: float | None = None


@dataclass
class Section:
    """One experiment of a study, as its TOML table says (``options`` holds the kind's own keys)."""

    id: str
    kind: str
    title: str
    settings: dict = field(default_factory=dict)
    study_says: str | None = None
    options: dict = field(default_factory=dict)


@dataclass
class Study:
    """A whole study file, checked."""

    title: str
    seeds: list
    baseline: dict
    sections: list
    baseline_note: str | None = None
    description: str | None = None
    source: str = ""
    source_note: str | None = None  # said after the source's path ("the default study")


@dataclass
class Cell:
    """One point of a section for one seed: the run that gives it, and which epoch of it.

    ``row`` identifies the point within the section (the swept value, the
    model name, ``(batch_size, epochs)`` of the grid); ``epoch`` is the epoch
    of the run's history whose figures the point takes (``None``: the run's
    final figures).
    """

    section: str
    row: object
    seed: int
    config: object
    epoch: int | None = None


# ------------------------------------------------------------------- reading


def default_study_path():
    """The path of the study shipped with npconv."""
    return str(resources.files("npconv") / "studies" / DEFAULT_STUDY)


def load_study(path=None):
    """Read and check a study file (default: the shipped one); :class:`NpconvError` says what is wrong."""
    where = "npconv/studies/default.toml" if path is None else os.fspath(path)
    path = default_study_path() if path is None else os.fspath(path)
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise NpconvError(f"{path}: no such file") from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise NpconvError(f"{path}: not a readable TOML file ({e})") from None
    study = parse_study(doc, where)
    study.source_note = "the default study" if path is None else None
    return study


def parse_study(doc, where="study"):
    """A :class:`Study` from the parsed TOML ``doc``; ``where`` names the file in messages."""

    def bad(message):
        raise NpconvError(f"{where}: {message}")

    unknown = set(doc) - TOP_KEYS
    if unknown:
        bad(f"unknown key(s) {', '.join(sorted(unknown))}; a study file holds " + ", ".join(sorted(TOP_KEYS)))
    seeds = doc.get("seeds", [0])
    if not (isinstance(seeds, list) and seeds and all(is_int(s) and s >= 0 for s in seeds)):
        bad(f"seeds must be a non-empty list of integers >= 0, got {seeds!r}")
    baseline = doc.get("baseline", {})
    if not isinstance(baseline, dict):
        bad("[baseline] must be a table of training settings")
    _check_settings(baseline, "[baseline]", bad)
    raw_sections = doc.get("section", [])
    if not isinstance(raw_sections, list) or not raw_sections:
        bad("a study needs at least one [[section]]")
    sections, ids = [], set()
    for i, raw in enumerate(raw_sections, start=1):
        section = _parse_section(raw, f"[[section]] number {i}", bad)
        if section.id in ids:
            bad(f"two sections have the id {section.id!r}")
        ids.add(section.id)
        sections.append(section)
    study = Study(title=str(doc.get("title", "Study")), seeds=list(dict.fromkeys(seeds)), baseline=dict(baseline),
                  sections=sections, baseline_note=doc.get("baseline_note"), description=doc.get("description"),
                  source=where)
    for cell in study_cells(study):  # every setting must make a valid run
        try:
            cell.config.validate()
        except NpconvError as e:
            bad(f"section {cell.section!r}: {e}")
    return study


def _check_settings(settings, what, bad):
    try:
        make_config(settings)
    except NpconvError as e:
        bad(f"{what}: {e}")


def _parse_section(raw, what, bad):
    if not isinstance(raw, dict):
        bad(f"{what} must be a table")
    kind = raw.get("kind")
    if kind not in KINDS:
        bad(f"{what}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    sid = raw.get("id")
    if not (isinstance(sid, str) and re.fullmatch(r"[a-z0-9][a-z0-9-]*", sid)):
        bad(f"{what}: id must be lower-case letters, digits and '-', got {sid!r}")
    what = f"section {sid!r}"
    unknown = set(raw) - COMMON_KEYS - SECTION_KEYS[kind]
    if unknown:
        bad(f"{what}: unknown key(s) {', '.join(sorted(unknown))} for a {kind} section "
            f"(it takes {', '.join(sorted(COMMON_KEYS | SECTION_KEYS[kind]))})")
    settings = raw.get("set", {})
    if not isinstance(settings, dict):
        bad(f"{what}: set must be a table of training settings")
    _check_settings(settings, f"{what}: set", bad)
    options = {k: raw[k] for k in SECTION_KEYS[kind] if k in raw}

    if kind == "curves":
        study = options.get("study", {})
        if not (isinstance(study, dict) and set(study) <= set(STUDY_FIGURES) and all(map(is_number, study.values()))):
            bad(f"{what}: study must be a table of numbers with keys among {', '.join(STUDY_FIGURES)}")
        options["study"] = Published(**study)
        if not is_number(options.setdefault("tolerance_pp", 1.0)) or options["tolerance_pp"] < 0:
            bad(f"{what}: tolerance_pp must be a number >= 0")
    elif kind == "models":
        models = options.get("models")
        if not (isinstance(models, list) and len(models) >= 2 and all(isinstance(m, str) for m in models)):
            bad(f"{what}: models must list at least two model names")
        for m in models:
            _check_settings({**settings, "model": m}, what, bad)
        if not is_number(options.setdefault("target_acc", 97.0)) or not 0 < options["target_acc"] <= 100:
            bad(f"{what}: target_acc must be a percentage in (0, 100]")
        if not is_number(options.setdefault("plateau_pp", 0.2)) or options["plateau_pp"] <= 0:
            bad(f"{what}: plateau_pp must be a number > 0")
    elif kind == "sweep":
        vary, values = options.get("vary"), options.get("values")
        if vary not in SETTINGS:
            bad(f"{what}: vary must name a training setting ({', '.join(SETTINGS)}), got {vary!r}")
        if vary == "seed":  # every cell is trained once per seed of the study: a varied seed would be overridden
            bad(f"{what}: a study's seeds are its `seeds` list, which every section is trained with; vary another "
                "setting")
        if not (isinstance(values, list) and values):
            bad(f"{what}: values must be a non-empty list")
        if len({json.dumps(v) for v in values}) != len(values):
            bad(f"{what}: a value is listed twice")
        for v in values:
            _check_settings({**settings, vary: v}, what, bad)
        labels = options.setdefault("labels", [str(v) for v in values])
        if not (isinstance(labels, list) and len(labels) == len(values) and all(isinstance(x, str) for x in labels)):
            bad(f"{what}: labels must be a list of {len(values)} strings, one per value")
        study = options.get("study")
        if study is not None and not (
            isinstance(study, list) and len(study) == len(values)
            and all(isinstance(r, list) and len(r) == 3 and all(map(is_number, r)) for r in study)
        ):
            bad(f"{what}: study must hold one row [train loss, train acc %, test acc %] per value ({len(values)})")
        if study is not None:
            options["study"] = [Published(*row) for row in study]
    elif kind == "grid":
        for key in ("batch_sizes", "epochs"):
            vals = options.get(key)
            if not (isinstance(vals, list) and vals and all(is_int(v) and v >= 1 for v in vals)):
                bad(f"{what}: {key} must be a non-empty list of integers >= 1")
            if len(set(vals)) != len(vals):
                bad(f"{what}: {key} lists a value twice")
    elif kind == "ablation":
        for key, allowed in ABLATION_ITEM_KEYS.items():
            items = options.get(key)
            if not (isinstance(items, list) and items and all(isinstance(i, dict) for i in items)):
                bad(f"{what}: {key} must be a non-empty list of tables {{label = ..., set = {{...}}}}")
            labels = [i.get("label") for i in items]
            if not all(isinstance(x, str) and x for x in labels) or len(set(labels)) != len(labels):
                bad(f"{what}: every entry of {key} needs its own label (a non-empty string)")
            for item in items:
                unknown = set(item) - allowed
                if unknown:
                    bad(f"{what}: {key} entry {item['label']!r}: unknown key(s) {', '.join(sorted(unknown))} "
                        f"(it takes {', '.join(sorted(allowed))})")
                if not isinstance(item.setdefault("set", {}), dict):
                    bad(f"{what}: {key} entry {item['label']!r}: set must be a table of training settings")
                _check_settings({**settings, **item["set"]}, f"{what}: {key} entry {item['label']!r}", bad)
                if "study" in item and not (is_number(item["study"]) and 0 <= item["study"] <= 100):
                    bad(f"{what}: case {item['label']!r}: study must be a test accuracy in % (0 to 100)")
        if not is_number(options.setdefault("tolerance_pp", 2.0)) or options["tolerance_pp"] < 0:
            bad(f"{what}: tolerance_pp must be a number >= 0")
    says = raw.get("study_says")
    if says is not None and not isinstance(says, str):
        bad(f"{what}: study_says must be a string")
    return Section(id=sid, kind=kind, title=str(raw.get("title", sid)), settings=dict(settings),
                   study_says=says, options=options)


# ----------------------------------------------------------- what to train


def shrink(study, *, epochs=None, train_subset=None, seeds=None):
    """A copy of ``study`` made smaller for a quick look.

    ``epochs`` replaces the baseline's epochs; a grid's epochs are scaled by
    the same factor (rounded, at least 1, repeats dropped). ``train_subset``
    trains every run on that many images; ``seeds`` replaces the seeds.
    """
    baseline = dict(study.baseline)
    sections = [Section(s.id, s.kind, s.title, dict(s.settings), s.study_says, dict(s.options)) for s in study.sections]
    for s in sections:  # an ablation's variants and cases hold settings too: copies, so that they can shrink
        for key in ABLATION_ITEM_KEYS:
            if key in s.options:
                s.options[key] = [{**item, "set": dict(item["set"])} for item in s.options[key]]

    def drop(name):  # the shrunk value replaces the sections' own
        for s in sections:
            s.settings.pop(name, None)
            for item in (i for key in ABLATION_ITEM_KEYS for i in s.options.get(key, [])):
                item["set"].pop(name, None)

    if epochs is not None:
        base_epochs = make_config(baseline).epochs
        baseline["epochs"] = epochs
        drop("epochs")
        for s in sections:
            if s.kind == "grid":
                scaled = [max(1, round(e * epochs / base_epochs)) for e in s.options["epochs"]]
                s.options["epochs"] = list(dict.fromkeys(scaled))
    if train_subset is not None:
        baseline["train_subset"] = train_subset
        drop("train_subset")
    return Study(study.title, list(seeds) if seeds is not None else list(study.seeds), baseline, sections,
                 study.baseline_note, study.description, study.source, study.source_note)


def section_cells(study, section):
    """The :class:`Cell` s of one section, for every seed."""
    base = {**study.baseline, **section.settings}
    cells = []
    for seed in study.seeds:
        if section.kind == "curves":
            cells.append(Cell(section.id, "baseline", seed, make_config({**base, "seed": seed})))
        elif section.kind == "models":
            for m in section.options["models"]:
                cells.append(Cell(section.id, m, seed, make_config({**base, "model": m, "seed": seed})))
        elif section.kind == "sweep":
            vary = section.options["vary"]
            for v in section.options["values"]:
                cells.append(Cell(section.id, v, seed, make_config({**base, vary: v, "seed": seed})))
        elif section.kind == "ablation":
            for v, variant in enumerate(section.options["variants"]):
                for c, case in enumerate(section.options["cases"]):
                    config = make_config({**base, **variant["set"], **case["set"], "seed": seed})
                    cells.append(Cell(section.id, (v, c), seed, config))
        elif section.kind == "grid":
            epochs = section.options["epochs"]
            prefix = make_config(base).lr_schedule == "constant"  # see the module docstring
            for b in section.options["batch_sizes"]:
                for e in epochs:
                    run_epochs = max(epochs) if prefix else e
                    config = make_config({**base, "batch_size": b, "epochs": run_epochs, "seed": seed})
                    cells.append(Cell(section.id, (b, e), seed, config, epoch=e if prefix else None))
    return cells


def study_cells(study):
    """Every section's cells, in section order."""
    return [cell for section in study.sections for cell in section_cells(study, section)]


def study_configs(study):
    """The distinct configs the study trains (each once), in section order."""
    return list({config_id(c.config): c.config for c in study_cells(study)}.values())


def config_id(config):
    """A hashable identity of a TrainConfig (its canonical settings)."""
    return json.dumps(config.canonical(), sort_keys=True)


def run_study(study, out_dir, *, workers=None, scheduler=None, progress=True, estimate=True, log=print,
              overrides=None):
    """Train every run the study needs into ``out_dir`` and write ``out_dir/REPORT.md``.

    Returns ``(report path, runs)``, the runs as :func:`npconv.experiments.sweep.run_sweep` returns them.

    ``overrides`` (e.g. ``{"epochs": 1}``) is only quoted in the report.
    """
    started = time.perf_counter()
    cells = study_cells(study)
    runs = run_sweep(study_configs(study), out_dir, workers=workers, scheduler=scheduler, progress=progress,
                     estimate=estimate, log=log)
    by_config = {config_id(r.config): r for r in runs}
    meta = {"wall_seconds": time.perf_counter() - started, "runs": len(runs), "overrides": overrides or {},
            "runs_reused": sum(r.reused for r in runs), "seconds_training": sum(
                (r.summary.total_seconds or 0) if r.summary else 0 for r in runs)}
    path = write_report(study, [(cell, by_config.get(config_id(cell.config))) for cell in cells], out_dir, meta)
    log(f"report: {path}")
    return path, runs
