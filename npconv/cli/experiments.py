"""``npconv sweep``, ``npconv study`` and ``npconv compare``.

``sweep`` takes every ``train`` option as a comma-separated list of values
and trains every combination; ``study`` runs a study file; ``compare``
overlays finished runs. A sweep whose runs all completed or diverged exits 0;
one in which a run failed (an unexpected error, recorded in the run's
``error.txt``) exits 1 after the others have run; so does a study.
"""

import sys
import time

from ..errors import NpconvError
from ..experiments.executors import default_workers
from ..experiments.runlist import MAX_DEPTH
from ..plots import MAX_SERIES
from ..text import WIDTH, plural, shorten, shorten_middle
from ..train.settings import SETTINGS
from .options import add_grid_options, positive_int

EXIT_RUNS_FAILED = 1


def _add_executor_options(p):
    p.add_argument("--workers", type=positive_int, metavar="N",
                   help=f"local worker processes, one BLAS thread each (default: the number of cores, "
                        f"{default_workers()} here; 1 trains in this process with a progress bar)")
    p.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                   help='run every training run as a task on this Dask distributed scheduler instead '
                        '(needs pip install "npconv[dask]")')
    p.add_argument("--no-estimate", dest="estimate", action="store_false",
                   help="skip timing a few batches to estimate the total time")
    p.add_argument("--dry-run", action="store_true",
                   help="only print how many runs there are and the time estimate; train nothing")
    p.add_argument("--quiet", action="store_true", help="no progress lines or bars")


def add_commands(sub):
    """Add ``sweep``, ``study`` and ``compare`` to the ``npconv`` sub-command parsers."""
    s = sub.add_parser(
        "sweep", help="train every combination of a grid of settings",
        description="Train one run per combination of the listed values (e.g. --lr 1e-3,1e-2 --seed 0,1,2); "
                    "writes OUT/runs/MODEL-KEY/ per run, OUT/results.csv and OUT/results.md. Runs already done "
                    "in OUT are skipped, so an interrupted sweep continues where it stopped.")
    add_grid_options(s)
    s.add_argument("--no-normalize", dest="no_normalize", action="store_true",
                   help="scale pixels to [0, 1] only, in every run (the same as --normalize false)")
    s.add_argument("--out", metavar="DIR", default="sweep", help="sweep folder (default: %(default)s)")
    _add_executor_options(s)

    st = sub.add_parser(
        "study", help="run a whole study (default: the course study) and write REPORT.md",
        description="Run every experiment of a study file and write OUT/REPORT.md with its figures in "
                    "OUT/figures/, the runs in OUT/runs/ and OUT/results.csv. Runs already done are reused.")
    st.add_argument("--config", metavar="FILE", help="study file (TOML; default: the course study shipped with npconv)")
    st.add_argument("--show-config", action="store_true", help="print the study file (to copy and edit) and exit")
    st.add_argument("--out", metavar="DIR", default="study", help="study folder (default: %(default)s)")
    st.add_argument("--epochs", type=positive_int, metavar="N",
                    help="a quick look: N epochs instead of the baseline's (a grid's epochs scale alike; "
                         "default: the study file's, 10 in the default study)")
    st.add_argument("--train-subset", type=positive_int, metavar="N",
                    help="a quick look: train every run on N images (default: all)")
    st.add_argument("--seeds", metavar="N[,...]",
                    help="replace the study's seeds (default: the study file's, 0,1,2 in the default study)")
    for name in ("device", "engine"):
        spec = SETTINGS[name]
        st.add_argument(spec.flag, choices=spec.choices,
                        help=f"{spec.help} (default: the study file's, {spec.default})")
    _add_executor_options(st)

    c = sub.add_parser(
        "compare", help="overlaid curves and a table for finished runs",
        description="Print a Markdown table of the runs and plot their curves together into --out. A sweep or "
                    "study folder, or a folder of run folders such as runs/, stands for all its finished runs. Runs "
                    "that differ only in their seed are one curve: the mean over the seeds, with a band for their "
                    f"spread. Each panel holds at most {MAX_SERIES} curves; more settings get more rows of panels.")
    c.add_argument("runs", nargs="+", metavar="RUN_DIR", help="a run folder, or a folder of runs")
    c.add_argument("--out", metavar="FILE.png", default="compare.png",
                   help="where the plot is written, a PNG (default: %(default)s)")

    r = sub.add_parser("runs", help="list the runs in a folder, newest first",
                       description="One line per run folder found in DIR (and its sub-folders, "
                                   f"{MAX_DEPTH} levels down): status, model, dataset, epochs done, test accuracy, "
                                   "when it last wrote, folder. Newest first.")
    r.add_argument("folder", nargs="?", default="runs", metavar="DIR",
                   help="where to look (default: %(default)s, where npconv train writes)")


def _progress_log(args):
    return (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))


def cmd_sweep(args):
    from ..experiments.sweep import expand_grid, parse_grid, run_sweep

    texts = {name: getattr(args, name) for name in SETTINGS if getattr(args, name) is not None}
    if args.no_normalize:
        texts.setdefault("normalize", "false")
    runs = run_sweep(expand_grid(parse_grid(texts)), args.out, workers=args.workers, scheduler=args.scheduler,
                     progress=not args.quiet, estimate=args.estimate, log=_progress_log(args), dry_run=args.dry_run)
    return 0 if args.dry_run else _final_line(runs, f"{args.out}/results.md")


def _final_line(runs, out):
    counts = {}
    for r in runs:
        counts[r.status] = counts.get(r.status, 0) + 1
    print(f"{plural(len(runs), 'run')}: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + f"  -> {out}")
    failed = counts.get("failed", 0) + counts.get("pending", 0) + counts.get("interrupted", 0)
    if failed:
        print(f"npconv: {plural(failed, 'run')} did not finish; see error.txt in their folders and run the "
              "command again", file=sys.stderr)
        return EXIT_RUNS_FAILED
    return 0


def cmd_study(args):
    from ..experiments.study import default_study_path, load_study, run_study, shrink, study_configs
    from ..experiments.sweep import parse_values, run_sweep

    if args.show_config:
        path = args.config or default_study_path()
        try:
            with open(path, encoding="utf-8") as f:
                sys.stdout.write(f.read())
        except OSError as e:
            raise NpconvError(f"--config {path}: {e.strerror}") from None
        return 0
    study = load_study(args.config)
    seeds = parse_values("seed", args.seeds) if args.seeds is not None else None
    overrides = {k: v for k, v in (("epochs", args.epochs), ("train_subset", args.train_subset)) if v is not None}
    if overrides or seeds is not None:
        study = shrink(study, epochs=args.epochs, train_subset=args.train_subset, seeds=seeds)
    if seeds is not None:
        overrides["seeds"] = ",".join(map(str, seeds))
    for name in ("device", "engine"):  # where and by what every run trains: part of the baseline (and the keys)
        if getattr(args, name) is not None:
            study.baseline = {**study.baseline, name: getattr(args, name)}
    if args.dry_run:
        run_sweep(study_configs(study), args.out, workers=args.workers, scheduler=args.scheduler,
                  log=lambda line: print(line, flush=True), dry_run=True)
        return 0
    path, runs = run_study(study, args.out, workers=args.workers, scheduler=args.scheduler, progress=not args.quiet,
                           estimate=args.estimate, log=_progress_log(args), overrides=overrides)
    return _final_line(runs, path)


def cmd_compare(args):
    from ..experiments.compare import compare

    result = compare(args.runs, args.out)
    if result.skipped:
        names = ", ".join(result.skipped)
        print(shorten(f"npconv: skipped {plural(len(result.skipped), 'unfinished run')} (no summary.json): {names}"),
              file=sys.stderr)
    if result.duplicates:
        names = ", ".join(result.duplicates)
        print(shorten(f"npconv: counted once {plural(len(result.duplicates), 'run')} found twice: {names}"),
              file=sys.stderr)
    sys.stdout.write(result.table)
    print(f"curves: {args.out}")
    return 0


def format_runs(entries):
    """The lines of ``npconv runs``: a header, then one line per run, each within the line width."""
    head = ["status", "model", "dataset", "epochs", "test acc", "when"]
    rows = [[e.status, e.model, e.dataset, f"{e.epochs_done}/{e.epochs if e.epochs is not None else '?'}",
             "" if e.test_acc is None else f"{100 * e.test_acc:.2f}%",
             time.strftime("%Y-%m-%d %H:%M", time.localtime(e.when))] for e in entries]
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    fixed = sum(widths) + 2 * len(widths)

    def line(cells, folder):
        text = "  ".join(f"{c:<{w}}" for c, w in zip(cells, widths))
        return f"{text}  {shorten_middle(folder, max(WIDTH - fixed, 24))}"  # both ends: which sweep, which run

    return [line(head, "folder")] + [line(row, e.path) for row, e in zip(rows, entries)]


def cmd_runs(args):
    from ..experiments.runlist import list_runs

    entries = list_runs(args.folder)
    if not entries:
        print(f"no runs in {args.folder}")
        return 0
    for text in format_runs(entries):
        print(text)
    counts = {}
    for e in entries:
        counts[e.status] = counts.get(e.status, 0) + 1
    print(f"{plural(len(entries), 'run')}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return 0


COMMANDS = {"sweep": cmd_sweep, "study": cmd_study, "compare": cmd_compare, "runs": cmd_runs}
