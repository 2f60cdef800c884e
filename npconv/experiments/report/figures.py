"""The report's figures (matplotlib, written as PNG): curves over seeds, a swept setting, the batch x epochs grid."""

from ...io import atomic_write
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


def plot_curves_band(series, path, title):
    """Loss and accuracy against epoch (mean over seeds, ±1 std band) for each ``(label, histories)``."""
    plt = _plt()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (label, histories) in enumerate(series):
        color = f"C{i}"
        for key, ax, style, scale in (("train_loss", ax_loss, "-", 1), ("test_loss", ax_loss, "--", 1),
                                      ("train_acc", ax_acc, "-", 100), ("test_acc", ax_acc, "--", 100)):
            epochs, mean, std = mean_curve(histories, key)
            if not epochs:
                continue
            split = key.split("_")[0]
            ax.plot(epochs, [scale * m for m in mean], style, marker="o", ms=3, color=color,
                    label=f"{label} {split}" if label else split)
            ax.fill_between(epochs, [scale * (m - s) for m, s in zip(mean, std)],
                            [scale * (m + s) for m, s in zip(mean, std)], color=color, alpha=0.15, lw=0)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss (solid: train, dashed: test)")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy (solid: train, dashed: test)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
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
    for key, name, marker in (("test_acc", "test (ours)", "o"), ("train_acc", "train (ours)", "s")):
        stats = [points[row_key(v)].stat(key) for v in values]
        xy = [(x, s) for x, s in zip(xs, stats) if s]
        if xy:
            ax.errorbar([x for x, _ in xy], [100 * s.mean for _, s in xy], yerr=[100 * s.std for _, s in xy],
                        marker=marker, capsize=4, label=name)
    study = section.options.get("study")
    if study:
        ax.plot(xs, [row.test_acc for row in study], "D", mfc="none", ms=8, color="k", label="test (study)")
    if numeric and _log_axis(values):
        ax.set_xscale("log")
    if not numeric or len(values) <= 6:
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, rotation=0 if numeric else 10)
    ax.set(xlabel=section.options["vary"].replace("_", " "), ylabel="accuracy (%)", title=section.title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_grid(section, points, path):
    """Accuracy against epochs, one line per batch size (test solid, train dashed)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    epochs = section.options["epochs"]
    for i, b in enumerate(section.options["batch_sizes"]):
        for key, style in (("test_acc", "-"), ("train_acc", "--")):
            stats = [points[(b, e)].stat(key) for e in epochs]
            xy = [(e, s) for e, s in zip(epochs, stats) if s]
            if xy:
                ax.errorbar([e for e, _ in xy], [100 * s.mean for _, s in xy], yerr=[100 * s.std for _, s in xy],
                            fmt=style, marker="o", capsize=3, color=f"C{i}",
                            label=f"batch {b} {key.split('_')[0]}")
    ax.set(xlabel="epochs", ylabel="accuracy (%)", title=section.title + " (solid: test, dashed: train)")
    ax.set_xticks(epochs)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    _save(fig, path)
