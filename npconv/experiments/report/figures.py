"""The report's figures other than curves (matplotlib, written as PNG): a swept setting, the batch x epochs grid,
an ablation's variants case by case. Its curves over seeds are :func:`npconv.plots.plot_curves`, in the same style."""

from ...plots import KEY, STYLES, pyplot, save_figure
from .points import row_key
from .verdicts import CHANCE_MARGIN_PP


def _log_axis(values):
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values) and \
        max(values) / min(values) >= 10


def plot_sweep(section, points, path):
    """Test (and train) accuracy against the swept value: mean ± std over seeds, the study's as hollow marks."""
    plt = pyplot()
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
    save_figure(fig, path)


def plot_grid(section, points, path):
    """Accuracy against epochs, one colour per batch size (train solid, test dashed)."""
    plt = pyplot()
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
    save_figure(fig, path)


def plot_ablation(section, points, path, chance_pct):
    """One panel per case: each variant's test accuracy (mean ± std over seeds); the study's figure dashed, with
    the band of ``tolerance_pp`` around it shaded, and chance dotted. A variant whose every seed diverged is
    marked so where its bar would be."""
    plt = pyplot()
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
    save_figure(fig, path)
