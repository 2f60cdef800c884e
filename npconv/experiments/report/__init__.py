"""The study report, ``REPORT.md`` and its figures, computed from the run folders.

By job, in dependency order:

================  ==========================================================
``stats.py``      mean ± std over seeds, and when two settings cannot be told apart
``verdicts.py``   which of the study's claims our runs reproduce: pure functions of numbers
``points.py``     each row of each section with its runs over the seeds (reads the run folders)
``figures.py``    the figures (matplotlib)
``markdown.py``   the Markdown, section by section
================  ==========================================================
"""

from ...errors import NpconvError
from .markdown import ReportWriter
from .points import gather


def write_report(study, cell_runs, out_dir, meta):
    """Write ``out_dir/REPORT.md`` and ``out_dir/figures/*.png``; returns the report's path.

    ``cell_runs`` pairs each of the study's :class:`~npconv.experiments.study.Cell` s
    with the sweep :class:`~npconv.experiments.sweep.Run` that holds its figures
    (None when there is none); ``meta`` holds the invocation's figures (wall
    time, runs reused, overrides).
    """
    points = gather(cell_runs)
    num_classes = 10
    for _, run in cell_runs:
        if run is None:
            continue
        try:
            num_classes = int(run.folder.read_config()["num_classes"])
            break
        except (NpconvError, KeyError, TypeError, ValueError):
            continue
    return ReportWriter(study, points, out_dir, num_classes).write(meta, study.seeds)
