"""The training loop: mini-batch SGD over epochs, and evaluation.

One training step is the whole of backpropagation::

    optimizer.zero_grad()
    loss = loss_fn(model(x), y)        # forward: each layer keeps what backward needs
    model.backward(loss_fn.backward(), input_grad=False)  # backward: fills every .grad (not dL/dx)
    optimizer.step()                   # the only place weights change
"""

import math
import sys
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from .. import backend as B
from ..errors import NpconvError
from ..nn import no_grad


class TrainingDiverged(NpconvError):
    """The loss became NaN or infinite, or exploded past :func:`divergence_threshold`; training cannot continue.

    ``epoch`` and ``step`` (from 1) say where; ``step`` is None when the test
    or validation loss of a finished epoch was the first non-finite figure.
    """

    def __init__(self, message, *, epoch=None, step=None):
        super().__init__(message)
        self.epoch = epoch
        self.step = step


#: A run whose mean training loss over an epoch exceeds this many times :math:`\\ln K` has diverged, even
#: while the loss stays finite (cf. PyTorch Lightning's ``divergence_threshold``). :math:`\\ln K` is the loss
#: of guessing every class with probability 1/K, where every run starts; a hundred times that means the
#: model gives the true class a probability of :math:`K^{-100}` on average: it is not learning, it is
#: exploding. Healthy runs stay below 1.5 ln K from their first epoch on (``benchmarks/check_divergence.py``
#: checks a study's runs against this rule).
DIVERGENCE_FACTOR = 100


def divergence_threshold(num_classes):
    """The training loss above which a run counts as diverged: :data:`DIVERGENCE_FACTOR` times ln K."""
    return DIVERGENCE_FACTOR * math.log(max(num_classes, 2))


def exploded(train_loss, threshold):
    """Whether an epoch's mean training loss means divergence: not finite, or above ``threshold``."""
    return not math.isfinite(train_loss) or train_loss > threshold


def mean_loss(loss_fn, loss, n):
    """The mean loss per example of a batch of ``n``, whatever the loss's reduction (``"sum"`` or mean)."""
    return loss / n if getattr(loss_fn, "reduction", "mean") == "sum" else loss


def show_progress_bars():
    """Progress bars only on a terminal: redirected to a file or a pipe, they would write a line per update."""
    return sys.stderr.isatty()


@dataclass
class EpochStats:
    """Metrics of one epoch. Accuracies are fractions in [0, 1].

    ``train_*`` are averaged over the epoch as it trained; ``test_*`` are
    measured after it, in eval mode; ``seconds`` is the wall time of the
    epoch's training steps (batching included, evaluation not).
    """

    epoch: int
    train_loss: float
    train_acc: float
    test_loss: float
    test_acc: float
    seconds: float
    val_loss: float | None = None
    val_acc: float | None = None


def evaluate(model, loss_fn, images, labels, batch_size=1000):
    """Loss and accuracy of ``model`` (in eval mode) on a whole dataset.

    Returns ``(mean_loss, accuracy, predictions)``; predictions are the
    argmax class of each image, a host array of shape (N,). The model's mode
    is restored. ``images`` and ``labels`` live on the backend's device; the
    sums stay there until the end.
    """
    was_training = model.training
    model.eval()
    total_loss, predictions = 0.0, []
    with no_grad():  # nothing is kept for a backward pass: faster
        for start in range(0, len(images), batch_size):
            xb, yb = images[start : start + batch_size], labels[start : start + batch_size]
            logits = model(xb)
            total_loss = total_loss + mean_loss(loss_fn, loss_fn(logits, yb), len(xb)) * len(xb)
            predictions.append(logits.argmax(axis=1))
    model.train(was_training)
    predictions = B.to_numpy(B.xp.concatenate(predictions))
    return float(total_loss) / len(images), float(np.mean(predictions == B.to_numpy(labels))), predictions


def train_epoch(model, loss_fn, optimizer, batches, *, epoch=None, progress=True, desc="train", monitor=None,
                on_step=None):
    """One pass over ``batches`` (an iterable of ``(x, y)`` with a ``len``).

    Returns ``(mean_loss, accuracy)`` averaged over the epoch's samples as
    training went (so with dropout active), the figures the progress bar shows.
    Raises :class:`TrainingDiverged` as soon as the loss is NaN or infinite.

    ``monitor``, if given (a :class:`npconv.train.health.HealthMonitor`), has its
    ``before_update()`` and ``after_update()`` called around the optimizer
    step of the epoch's last step only, so it costs nothing on the others.
    """
    model.train()
    seen = correct = 0
    total_loss = 0.0
    last_step = len(batches)
    # On the host every loss is checked at once; on a device, where reading a value waits for the
    # GPU, the losses of CHECK_EVERY steps are kept there and checked together (divergence is still
    # reported at its exact step; the steps after it in that stretch are wasted, and discarded).
    check_every = 1 if B.on_host() else CHECK_EVERY
    unchecked = []  # (step, loss) not checked yet
    checked = []    # (step, loss as a float) checked, not yet given to on_step
    show = progress and show_progress_bars()
    bar = tqdm(total=len(batches), desc=desc, unit="batch", leave=False, disable=not show, dynamic_ncols=True)
    with bar:
        for step, (xb, yb) in enumerate(batches, start=1):
            optimizer.zero_grad()
            logits = model(xb)
            loss = loss_fn(logits, yb)
            unchecked.append((step, loss))
            if len(unchecked) >= check_every or step == last_step:
                checked += _check_finite(unchecked, epoch)
                unchecked = []
            model.backward(loss_fn.backward(), input_grad=False)  # the images need no gradient
            if monitor is not None and step == last_step:
                monitor.before_update()
                optimizer.step()
                monitor.after_update()
            else:
                optimizer.step()
            if on_step is not None:
                for checked_step, value in checked:
                    on_step(epoch, checked_step, value)
            checked = []
            seen += len(yb)
            total_loss = total_loss + mean_loss(loss_fn, loss, len(yb)) * len(yb)  # on the device, as the loss
            correct = correct + (logits.argmax(axis=1) == yb).sum()
            bar.update()
            if show and (step % 20 == 0 or step == len(batches)):
                bar.set_postfix(loss=f"{float(total_loss) / seen:.4f}", acc=f"{int(correct) / seen:.4f}",
                                refresh=False)
    return float(total_loss) / seen, int(correct) / seen


#: On a device, the steps whose losses are checked together for divergence (one wait for the GPU each).
CHECK_EVERY = 50


def _check_finite(losses, epoch):
    """Raise :class:`TrainingDiverged` at the first of ``losses`` (``(step, loss)`` pairs) that is not finite;
    else return them as ``(step, float)`` pairs."""
    if B.on_host():
        values = [loss for _, loss in losses]
    else:  # one transfer for the whole stretch
        values = B.to_numpy(B.xp.stack([B.xp.asarray(loss) for _, loss in losses])).tolist()
    for (step, _), value in zip(losses, values):
        if not math.isfinite(value):
            where = f"epoch {epoch}, step {step}" if epoch is not None else f"step {step}"
            raise TrainingDiverged(f"diverged at {where} (loss {value})", epoch=epoch, step=step)
    return [(step, float(value)) for (step, _), value in zip(losses, values)]


def fit(model, loss_fn, optimizer, batches, test_images, test_labels, epochs, *, val=None, lr_schedule=None,
        start_epoch=1, progress=True, on_epoch_end=None, monitor=None, divergence_threshold=None, on_step=None):
    """Train epochs ``start_epoch .. epochs``, evaluating on the test set (and ``val``) after each.

    ``val`` is an optional ``(images, labels)`` validation set held out of training.
    ``lr_schedule(epoch) -> lr``, if given, sets ``optimizer.lr`` before each epoch.
    ``start_epoch > 1`` continues a run restored from a checkpoint.
    ``monitor`` and ``on_step`` are passed to :func:`train_epoch`.

    ``on_epoch_end(stats)`` is called with each :class:`EpochStats`, e.g. to
    print it or write the history. Returns the list of the epochs' stats.
    Raises :class:`TrainingDiverged` if a training, test or validation loss is
    not finite, or an epoch's mean training loss is above ``divergence_threshold``
    (see :func:`divergence_threshold`; None: no limit), before ``on_epoch_end`` sees that epoch.
    """
    history = []
    for epoch in range(start_epoch, epochs + 1):
        if lr_schedule is not None:
            optimizer.lr = lr_schedule(epoch)
        started = time.perf_counter()
        train_loss, train_acc = train_epoch(
            model, loss_fn, optimizer, batches, epoch=epoch, progress=progress, desc=f"epoch {epoch}/{epochs}",
            monitor=monitor, on_step=on_step,
        )
        seconds = time.perf_counter() - started  # training only; evaluation is not counted
        if divergence_threshold is not None and exploded(train_loss, divergence_threshold):
            raise TrainingDiverged(f"diverged in epoch {epoch} (train loss {train_loss:.3g} > "
                                   f"{divergence_threshold:.0f})", epoch=epoch)
        test_loss, test_acc, _ = evaluate(model, loss_fn, test_images, test_labels)
        stats = EpochStats(epoch, train_loss, train_acc, test_loss, test_acc, seconds)
        if val is not None:
            stats.val_loss, stats.val_acc, _ = evaluate(model, loss_fn, *val)
        for name in ("test_loss", "val_loss"):
            value = getattr(stats, name)
            if value is not None and not math.isfinite(value):
                # The epoch's last update made the weights non-finite.
                raise TrainingDiverged(f"diverged in epoch {epoch} ({name.replace('_', ' ')} {value})", epoch=epoch)
        history.append(stats)
        if on_epoch_end is not None:
            on_epoch_end(stats)
    return history
