"""The report's data: each row of each section (a swept value, a model, a grid cell) with its runs over the seeds."""

from dataclasses import dataclass, field

from .stats import stat


@dataclass
class Figures:
    """The final figures of one run (or of one epoch of it); accuracies as fractions."""

    train_loss: float | None
    train_acc: float | None
    test_loss: float | None
    test_acc: float | None
    total_seconds: float | None
    seconds_per_epoch: float | None


@dataclass
class Point:
    """One row of a section over all seeds: per seed, its status, figures, history and folder."""

    row: object
    seeds: list = field(default_factory=list)
    statuses: list = field(default_factory=list)
    figures: list = field(default_factory=list)    # per seed: Figures, or None when missing
    histories: list = field(default_factory=list)  # per seed: EpochStats up to the cell's epoch
    folders: list = field(default_factory=list)

    def stat(self, name):
        """A :class:`~npconv.experiments.report.stats.Stat` of one figure over the seeds."""
        return stat([getattr(f, name) if f else None for f in self.figures], len(self.seeds))

    @property
    def all_diverged(self):
        return bool(self.statuses) and all(s == "diverged" for s in self.statuses)

    def status_note(self):
        counts = {s: self.statuses.count(s) for s in dict.fromkeys(self.statuses) if s != "completed"}
        return ", ".join(f"{s} ({k}/{len(self.statuses)})" for s, k in counts.items())


def cell_figures(run, epoch, histories=None):
    """The figures and the history of one sweep run, at ``epoch`` (None: its end).

    ``histories`` (a dict by run folder), when given, keeps each run's history once read: several
    cells (a section's baseline, a grid's shorter epochs) read the same run.
    """
    if run is None or run.summary is None:
        return None, []
    histories = {} if histories is None else histories
    path = run.folder.path
    if path not in histories:
        histories[path] = run.folder.read_history()
    history = histories[path]
    if epoch is None:
        s = run.summary
        return Figures(s.train_loss, s.train_acc, s.test_loss, s.test_acc, s.total_seconds,
                       s.seconds_per_epoch), history
    history = history[:epoch]
    if len(history) < epoch:  # the run stopped (diverged) before that epoch
        return None, history
    last = history[-1]
    seconds = sum(h.seconds for h in history)
    return Figures(last.train_loss, last.train_acc, last.test_loss, last.test_acc, seconds, seconds / epoch), history


def row_key(row):
    """A row as a dict key (a grid cell's ``[batch, epochs]`` list becomes a tuple)."""
    return tuple(row) if isinstance(row, list) else row


def gather(cell_runs):
    """``{section id: {row: Point}}`` from the study's cells, each paired with the sweep run that holds its figures."""
    sections, histories = {}, {}
    for cell, run in cell_runs:
        points = sections.setdefault(cell.section, {})
        point = points.setdefault(row_key(cell.row), Point(cell.row))
        figures, history = cell_figures(run, cell.epoch, histories)
        status = run.status if run is not None else "missing"
        if cell.epoch is not None and figures is None and status == "completed":
            status = "missing"
        point.seeds.append(cell.seed)
        point.statuses.append(status)
        point.figures.append(figures)
        point.histories.append(history)
        point.folders.append(run.folder.path if run is not None else None)
    return sections
