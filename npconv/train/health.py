r"""Training health: per-layer figures that tell whether training is going well, and advice.

After each epoch a :class:`HealthMonitor` measures, for every layer of a
:class:`~npconv.nn.Sequential` model:

``grad_norm`` (layers with parameters)
    :math:`\lVert g \rVert_2` over all of the layer's parameters, the raw
    gradient of the loss (before weight decay) on the epoch's last step.
``update_ratio`` (layers with parameters)
    :math:`\lVert \Delta W \rVert_2 / \lVert W \rVert_2` for the layer's weight,
    the size of the epoch's last optimizer step relative to the weight. A
    common rule of thumb puts healthy training near :math:`10^{-3}`; far above,
    each step rewrites the weights and training is unstable (weight decay
    counts too: it shrinks the weights by ``lr * weight_decay`` per step).
    Empty when :math:`\lVert W \rVert_2 = 0`.
``dead_fraction`` (ReLU)
    The fraction of the layer's output units that are zero for *every* image of
    a fixed probe batch (the first :data:`PROBE_SIZE` training images, in eval
    mode). A dead unit passes no gradient and never recovers.
``saturated_fraction`` (Sigmoid, Tanh)
    The fraction of the layer's outputs on the probe batch within 0.01 of the
    function's limits (0 or 1 for Sigmoid, -1 or 1 for Tanh), where the local
    gradient is < 0.01.

Measuring costs one copy of the weights on the epoch's last step and one
forward pass of the probe batch per epoch; the training loop itself is
untouched. The code lives outside the layers: activations are recomputed by
calling the layers one by one, never read from what a layer kept for backward.
Nothing here draws random numbers (the probe runs in eval mode, so dropout is
the identity), so measuring does not change training at all.

:func:`advise` turns the figures into one-line advice: learning rate too high,
ReLUs dead, sigmoid units saturated, a loss stuck at :math:`\ln K` (what a
model that predicts every class with probability 1/K scores). The thresholds
were set on the study's models: the defaults stay silent, learning rate 0.5 or
weight decay 0.5 do not.
"""

import csv
import io
import math
import statistics

from .. import backend as B
from .. import engine, nn

#: Images in the probe batch the activations are measured on.
PROBE_SIZE = 256

#: Columns of ``health.csv``, one row per layer per epoch; a figure that does
#: not apply to a layer is left empty.
HEALTH_COLUMNS = ["epoch", "layer", "type", "grad_norm", "update_ratio", "dead_fraction", "saturated_fraction"]

#: Healthy ranges; :func:`advise` speaks up outside them.
UPDATE_RATIO_HIGH = 2e-2        # 20x the rule-of-thumb 1e-3 (early epochs of good runs reach 1e-2)
DEAD_FRACTION_HIGH = 0.5        # most ReLU units dead
SATURATED_FRACTION_HIGH = 0.5   # most sigmoid/tanh outputs saturated
STUCK_LOSS_TOLERANCE = 0.01     # relative distance of the training loss from ln K

_SATURATION_MARGIN = 0.01


def _norm(arrays):
    return math.sqrt(sum(float(B.xp.vdot(a, a)) for a in arrays))


class HealthMonitor:
    """Per-layer health figures of a Sequential model, one set per epoch.

    The training loop calls :meth:`before_update` and :meth:`after_update`
    around the optimizer step of each epoch's last step
    (:func:`npconv.train.loop.train_epoch` does, when given a monitor); then
    :meth:`measure` gives the epoch's rows.

    Parameters
    ----------
    model : Sequential
    probe_images : array
        The images activations are measured on, e.g. the first
        :data:`PROBE_SIZE` training images, shape (P, C, H, W).
    """

    def __init__(self, model, probe_images):
        if not isinstance(model, nn.Sequential):
            raise TypeError(f"HealthMonitor needs a Sequential model, got {type(model).__name__}")
        self.model = model
        self.probe_images = probe_images
        self._grad_norms = {}
        self._weights_before = {}
        self._update_ratios = {}

    def _layers_with_parameters(self):
        for i, layer in enumerate(self.model):
            params = dict(layer.named_parameters())
            if params:
                yield i, params

    def before_update(self):
        """Record gradient norms and a copy of each weight (call just before ``optimizer.step()``)."""
        self._grad_norms, self._weights_before = {}, {}
        for i, params in self._layers_with_parameters():
            self._grad_norms[i] = _norm([p.grad for p in params.values()])
            weight = params.get("weight", next(iter(params.values())))
            self._weights_before[i] = weight.data.copy()

    def after_update(self):
        """Record each layer's update-to-weight ratio (call just after ``optimizer.step()``)."""
        self._update_ratios = {}
        for i, params in self._layers_with_parameters():
            before = self._weights_before[i]
            weight = params.get("weight", next(iter(params.values())))
            size = _norm([before])
            self._update_ratios[i] = _norm([weight.data - before]) / size if size > 0 else None
        self._weights_before = {}

    def measure(self, epoch):
        """The epoch's rows (dicts keyed by :data:`HEALTH_COLUMNS`), one per layer."""
        activations = self._probe_activations()
        rows = []
        for i, layer in enumerate(self.model):
            row = dict.fromkeys(HEALTH_COLUMNS)
            row.update(epoch=epoch, layer=i, type=type(layer).__name__)
            row["grad_norm"] = self._grad_norms.get(i)
            row["update_ratio"] = self._update_ratios.get(i)
            y = activations[i]
            if isinstance(layer, nn.ReLU):
                # A unit is one output element (a channel at one position for a conv layer).
                alive = B.to_numpy((y > 0).any(axis=0))
                row["dead_fraction"] = 1.0 - float(alive.mean())
            elif isinstance(layer, nn.Sigmoid):
                row["saturated_fraction"] = float(B.to_numpy(B.xp.abs(y - 0.5) > 0.5 - _SATURATION_MARGIN).mean())
            elif isinstance(layer, nn.Tanh):
                row["saturated_fraction"] = float(B.to_numpy(B.xp.abs(y) > 1 - _SATURATION_MARGIN).mean())
            rows.append(row)
        return rows

    def _probe_activations(self):
        """Each layer's output on the probe batch, in eval mode (no randomness)."""
        was_training = self.model.training
        self.model.eval()
        try:
            outputs = engine.layer_outputs(self.model, self.probe_images)  # under no_grad: nothing kept
        finally:
            self.model.train(was_training)
        return outputs


def advise(rows, train_loss, train_acc, num_classes):
    """Advice for one epoch: a list of ``(key, line)``, the key naming the kind of problem.

    ``rows`` are the epoch's rows from :meth:`HealthMonitor.measure`;
    ``train_loss`` and ``train_acc`` are the epoch's training figures. Each
    line says which figure left its healthy range and the likely cause:

    * the median update/weight ratio of the hidden layers (every layer with
      parameters but the output layer, which starts at zero in the study's
      models and so moves fast at first) above :data:`UPDATE_RATIO_HIGH`;
    * a ReLU layer with more than :data:`DEAD_FRACTION_HIGH` of its units dead;
    * a Sigmoid or Tanh layer with more than :data:`SATURATED_FRACTION_HIGH`
      of its outputs saturated;
    * a training loss within :data:`STUCK_LOSS_TOLERANCE` of ln K with an
      accuracy near chance (below 1.5 / K): the model predicts the same
      distribution for every image.
    """
    advice = []
    with_params = [r for r in rows if r["update_ratio"] is not None]
    hidden = with_params[:-1] or with_params
    if hidden:
        ratio = statistics.median(r["update_ratio"] for r in hidden)
        if ratio > UPDATE_RATIO_HIGH:
            advice.append(("lr-too-high", f"update/weight ratio {ratio:.1e} in hidden layers, healthy is ~1e-3: "
                                          "lr or weight decay too high"))
    dead = [r for r in rows if r["dead_fraction"] is not None and r["dead_fraction"] > DEAD_FRACTION_HIGH]
    if dead:
        row = max(dead, key=lambda r: r["dead_fraction"])
        advice.append(("dead-relu", f"{100 * row['dead_fraction']:.0f}% of the ReLUs of layer {row['layer']} are dead "
                                    "(zero on every probe image): learning rate too high?"))
    saturated = [r for r in rows
                 if r["saturated_fraction"] is not None and r["saturated_fraction"] > SATURATED_FRACTION_HIGH]
    if saturated:
        row = max(saturated, key=lambda r: r["saturated_fraction"])
        advice.append(("saturated", f"{100 * row['saturated_fraction']:.0f}% of the {row['type']} outputs of layer "
                                    f"{row['layer']} saturate (no gradient): lower the lr?"))
    chance = math.log(num_classes) if num_classes > 1 else None
    if chance and abs(train_loss - chance) <= STUCK_LOSS_TOLERANCE * chance and train_acc < 1.5 / num_classes:
        advice.append(("loss-at-chance", f"training loss {train_loss:.4f} stuck at ln {num_classes} (one guess for "
                                         "every image): weight decay or lr too high"))
    return advice


def new_advice(given, rows, stats, num_classes):
    """The advice of the epoch ``stats`` (an :class:`~npconv.train.loop.EpochStats`) not in ``given`` already
    (earlier epochs' advice): ``[{"epoch", "key", "message"}, ...]``, each kind of problem said once per run."""
    keys = {a["key"] for a in given}
    return [{"epoch": stats.epoch, "key": key, "message": line}
            for key, line in advise(rows, stats.train_loss, stats.train_acc, num_classes) if key not in keys]


def health_csv(rows):
    """The rows as CSV text with :data:`HEALTH_COLUMNS`; floats in full precision (``repr``)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(HEALTH_COLUMNS)
    for row in rows:
        writer.writerow(["" if row[c] is None else repr(row[c]) if isinstance(row[c], float) else row[c]
                         for c in HEALTH_COLUMNS])
    return buf.getvalue()


def probe_batch(images):
    """The probe batch: the first :data:`PROBE_SIZE` of ``images`` (a fixed choice, no randomness)."""
    return images[:PROBE_SIZE]
