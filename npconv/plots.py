"""Training curves as PNG: the one place npconv draws loss and accuracy against epoch (matplotlib, no screen).

Every figure of curves uses one style: train solid with circles, test dashed
with squares (:data:`KEY`); one colour per series (a single series: one
colour for train, another for test); the mean over seeds as the line and a
band of ±1 sample standard deviation around it where there are several
seeds; an axis with a single epoch shows its points as large markers on one
tick. Each *series* is ``(label, histories)``: the histories of the runs
(seeds) of one setting, each a list of :class:`~npconv.train.loop.EpochStats`
(or anything with ``train_loss``, ``test_loss``, ``train_acc``, ``test_acc``).

* :func:`plot_curves` -- loss and accuracy, side by side: a run's
  ``curves.png`` and the report's curve figures;
* :func:`plot_comparison` -- train loss, test loss, train accuracy and test
  accuracy in four panels, a row of panels per :data:`MAX_SERIES` series:
  ``npconv compare``.

:func:`pyplot` and :func:`save_figure` are the other figures' way to
matplotlib (the report's sweeps, grids and ablations). matplotlib takes a
second to import, so nothing imports it until a figure is drawn.
"""

import math
import statistics

from .io import atomic_write

#: The one line-style key of every figure: train solid, test dashed ...
STYLES = {"train": "-", "test": "--"}
#: ... with circles for train and squares for test (alone, they show an axis of single points).
MARKERS = {"train": "o", "test": "s"}
KEY = "solid: train, dashed: test"
#: Series per panel at most in :func:`plot_comparison` (matplotlib's ten distinct default colours).
MAX_SERIES = 10
#: The four panels of :func:`plot_comparison`: ``(figure, title, scale)``.
PANELS = (("train_loss", "train loss", 1), ("test_loss", "test loss", 1), ("train_acc", "train accuracy (%)", 100),
          ("test_acc", "test accuracy (%)", 100))


def pyplot():
    """matplotlib's pyplot, drawing to files only (the Agg backend): no display is ever needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, dpi=100, tight=True):
    """Write ``fig`` to ``path`` as PNG, atomically, and close it."""
    if tight:
        fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=dpi)
    pyplot().close(fig)


def mean_curve(histories, key):
    """Per epoch: ``(epochs, means, stds)`` of figure ``key`` over the histories that reached that epoch.

    The mean and the sample standard deviation (``ddof=1``; 0 for one value) of
    the finite values; an epoch with none is left out.
    """
    longest = max((len(h) for h in histories), default=0)
    epochs, means, stds = [], [], []
    for i in range(longest):
        values = [float(v) for h in histories if len(h) > i
                  for v in [getattr(h[i], key)] if v is not None and math.isfinite(v)]
        if values:
            epochs.append(i + 1)
            means.append(statistics.fmean(values))
            stds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
    return epochs, means, stds


def draw_curve(ax, histories, key, color, label, scale=1):
    """One figure's mean curve over ``histories`` on ``ax``, in the style of its split, with its ±1 std band."""
    epochs, mean, std = mean_curve(histories, key)
    if not epochs:
        return
    split = key.split("_")[0]
    ax.plot(epochs, [scale * m for m in mean], STYLES[split], marker=MARKERS[split], ms=7 if len(epochs) == 1 else 3,
            color=color, label=label)
    if len(histories) > 1:
        ax.fill_between(epochs, [scale * (m - s) for m, s in zip(mean, std)],
                        [scale * (m + s) for m, s in zip(mean, std)], color=color, alpha=0.15, lw=0)


def epoch_axis(ax, longest):
    """An epoch axis with whole numbers; a single epoch gets one tick, not a fractional axis around it."""
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    if longest == 1:
        ax.set_xticks([1])
    else:
        ax.xaxis.get_major_locator().set_params(integer=True)


def _longest(series):
    return max((len(h) for _, histories in series for h in histories), default=0)


def plot_curves(series, path, title=None):
    """Loss and accuracy against epoch, side by side, train and test, for each ``(label, histories)``; PNG to
    ``path``. A single run's curves: ``plot_curves([("", [history])], path)``."""
    plt = pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (label, histories) in enumerate(series):
        for key, ax, scale in (("train_loss", ax_loss, 1), ("test_loss", ax_loss, 1),
                               ("train_acc", ax_acc, 100), ("test_acc", ax_acc, 100)):
            split = key.split("_")[0]
            color = f"C{i}" if len(series) > 1 else ("C0" if split == "train" else "C1")
            draw_curve(ax, histories, key, color, f"{label} {split}" if label else split, scale)
    ax_loss.set(ylabel="loss", title=f"Loss ({KEY})")
    ax_acc.set(ylabel="accuracy (%)", title=f"Accuracy ({KEY})")
    for ax in (ax_loss, ax_acc):
        epoch_axis(ax, _longest(series))
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    save_figure(fig, path)


def plot_comparison(series, path):
    """The four :data:`PANELS` for each ``(label, histories)``, a row per :data:`MAX_SERIES` series, the legend to
    the right of each row; PNG to ``path``."""
    plt = pyplot()
    chunks = [series[i:i + MAX_SERIES] for i in range(0, len(series), MAX_SERIES)]
    fig = plt.figure(figsize=(17, 3.4 * len(chunks)), layout="constrained")
    rows = fig.subfigures(len(chunks), 1) if len(chunks) > 1 else [fig]
    for row, chunk in zip(rows, chunks):
        axes = row.subplots(1, len(PANELS))
        for i, (label, histories) in enumerate(chunk):
            for ax, (key, _, scale) in zip(axes, PANELS):
                draw_curve(ax, histories, key, f"C{i}", label, scale)
        for ax, (_, title, _) in zip(axes, PANELS):
            ax.set_title(title)
            epoch_axis(ax, _longest(chunk))
        handles, labels = axes[0].get_legend_handles_labels()
        row.legend(handles, labels, loc="outside right upper", fontsize=8)
    save_figure(fig, path, dpi=90, tight=False)
