"""The report's figures (matplotlib, written as PNG): curves over seeds, a swept setting, the batch x epochs grid,
an ablation's variants case by case."""

from ...io import atomic_write
from .verdicts import CHANCE_MARGIN_PP
from .points import row_key
from .stats import mean_curve


def _plt():
    from ...train.curves import plt  # Agg backend, imported only when a figure is drawn

    return plt


def _save(fig, path):
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)
    _plt().close(fig)


#: The one line-style key of every figure: train solid, test dashed.
STYLES = {"train": "-", "test": "--"}
#: ... and, for an axis of single points where no line shows, circles for train and squares for test.
MARKERS = {"train": "o", "test": "s"}
KEY = "solid: train, dashed: test"


def plot_curves_band(series, path, title):
    """Loss and accuracy against epoch (mean over seeds, ±1 std band) for each ``(label, histories)``.

    Train is solid and test dashed (:data:`KEY`), with circles and squares;
    each series has its colour, and a single series gets one colour for train
    and another for test. An axis with one epoch shows its points as large markers.
    """
    plt = _plt()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (label, histories) in enumerate(series):
        for key, ax, scale in (("train_loss", ax_loss, 1), ("test_loss", ax_loss, 1),
                               ("train_acc", ax_acc, 100), ("test_acc", ax_acc, 100)):
            epochs, mean, std = mean_curve(histories, key)
            if not epochs:
                continue
            split = key.split("_")[0]
            color = f"C{i}" if len(series) > 1 else ("C0" if split == "train" else "C1")
            ax.plot(epochs, [scale * m for m in mean], STYLES[split], marker=MARKERS[split],
                    ms=7 if len(epochs) == 1 else 3, color=color, label=f"{label} {split}" if label else split)
            ax.fill_between(epochs, [scale * (m - s) for m, s in zip(mean, std)],
                            [scale * (m + s) for m, s in zip(mean, std)], color=color, alpha=0.15, lw=0)
    ax_loss.set(xlabel="epoch", ylabel="loss", title=f"Loss ({KEY})")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title=f"Accuracy ({KEY})")
    longest = max((len(h) for _, histories in series for h in histories), default=0)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if longest == 1:
            ax.set_xticks([1])  # one epoch: one tick, not a fractional axis around it
        else:
            ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title)
    _save(fig, path)


def _log_axis(values):
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values) and \
        max(values) / min(values) >= 10


def plot_sweep(section, points, path):
    """Test (and train) accuracy against the swept value: mean ± std over seeds, the study's as hollow marks."""
    plt = _plt()
    values, labels = section.options["values"], section.options["labels"]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    xs = list(values) if numeric else list(range(len(values)))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, name, marker in (("train_acc", "train (ours)", "s"), ("test_acc", "test (ours)", "o")):
        stats = [points[row_key(v)].stat(key) for v in values]
        xy = [(x, s) for x, s in zip(xs, stats) if s]
        if xy:
            ax.errorbar([x for x, _ in xy], [100 * s.mean for _, s in xy], yerr=[100 * s.std for _, s in xy],
                        fmt=STYLES[key.split("_")[0]], marker=marker, capsize=4, label=name)
    study = section.options.get("study")
    if study:
        ax.plot(xs, [row.test_acc for row in study], "D", mfc="none", ms=8, color="k", label="test (study)")
    if numeric and _log_axis(values):
        ax.set_xscale("log")
    if not numeric or len(values) <= 6:
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, rotation=0 if numeric else 10)
    ax.set(xlabel=section.options["vary"].replace("_", " "), ylabel="accuracy (%)", title=f"{section.title} ({KEY})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_grid(section, points, path):
    """Accuracy against epochs, one colour per batch size (train solid, test dashed)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    epochs = section.options["epochs"]
    for i, b in enumerate(section.options["batch_sizes"]):
        for key in ("train_acc", "test_acc"):
            split = key.split("_")[0]
            stats = [points[(b, e)].stat(key) for e in epochs]
            xy = [(e, s) for e, s in zip(epochs, stats) if s]
            if xy:
                ax.errorbar([e for e, _ in xy], [100 * s.mean for _, s in xy], yerr=[100 * s.std for _, s in xy],
                            fmt=STYLES[split], marker="o", ms=7 if len(xy) == 1 else 5, capsize=3, color=f"C{i}",
                            label=f"batch {b} {split}")
    ax.set(xlabel="epochs", ylabel="accuracy (%)", title=f"{section.title} ({KEY})")
    ax.set_xticks(epochs)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    _save(fig, path)


def plot_ablation(section, points, path, chance_pct):
    """One panel per case: each variant's test accuracy (mean ± std over seeds); the study's figure dashed, with
    the band of ``tolerance_pp`` around it shaded, and chance dotted. A variant whose every seed diverged is
    marked so where its bar would be."""
    plt = _plt()
    variants, cases = section.options["variants"], section.options["cases"]
    tolerance = section.options["tolerance_pp"]
    fig, axes = plt.subplots(1, len(cases), figsize=(4.2 * len(cases) + 2.5, 0.45 * len(variants) + 1.8),
                             sharey=True, squeeze=False)
    ys = list(range(len(variants)))[::-1]
    for c, (ax, case) in enumerate(zip(axes[0], cases)):
        stats = [points[(v, c)].stat("test_acc") for v in range(len(variants))]
        ax.barh(ys, [100 * s.mean if s else 0 for s in stats], xerr=[100 * s.std if s else 0 for s in stats],
                color=[f"C{v % 10}" for v in range(len(variants))], capsize=3)
        for y, v in zip(ys, range(len(variants))):
            if points[(v, c)].all_diverged:
                ax.text(2, y, "diverged", va="center", fontsize=8)
        title = case["label"]
        if case.get("study") is not None:
            ax.axvline(case["study"], color="k", ls="--", lw=1)
            if case["study"] >= chance_pct + CHANCE_MARGIN_PP:  # "near the study": shaded
                ax.axvspan(case["study"] - tolerance, case["study"] + tolerance, color="0.85", zorder=0)
            title += f" (study: {case['study']:.2f} %)"
        ax.axvline(chance_pct, color="0.5", ls=":", lw=1)
        ax.set(xlim=(0, 100), xlabel="test accuracy (%)", title=title)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(ys)
    axes[0][0].set_yticklabels([v["label"] for v in variants], fontsize=8)
    fig.suptitle(f"{section.title} (dashed: the study, shaded: ±{tolerance:g} points of it, dotted: chance)")
    _save(fig, path)
