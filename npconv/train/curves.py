"""Training curves as PNG (matplotlib, no display needed)."""

import matplotlib

matplotlib.use("Agg")  # render to files; never needs a screen
import matplotlib.pyplot as plt  # noqa: E402

from ..io import atomic_write  # noqa: E402


def plot_curves(history, path, title=None):
    """Loss and accuracy against epoch, train and test, side by side, written to ``path``.

    ``history`` is a list of :class:`~npconv.training.EpochStats` (or anything
    with the same attributes).
    """
    epochs = [h.epoch for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h.train_loss for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h.test_loss for h in history], "s-", label="test")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_acc.plot(epochs, [100 * h.train_acc for h in history], "o-", label="train")
    ax_acc.plot(epochs, [100 * h.test_acc for h in history], "s-", label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
