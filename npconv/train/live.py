"""What a run shows while it trains: every step's loss, and snapshots of its first convolution.

A run folder is read by others while it is written (``npconv serve``'s Train
and Runs views follow a run that way). Besides the files of each epoch's end
(:meth:`~npconv.train.runfolder.RunFolder.write_epoch`), a run writes, through
:class:`LiveRecord`:

* ``losses.csv``: one line per training step, ``step,epoch,loss,time``, the
  step counted from the run's start (epoch ``e``'s step ``s`` is
  ``(e - 1) * steps_per_epoch + s``);
* ``snapshot.npz``: the weights of the model's first convolution and the
  feature maps they make of a fixed image (the first test image), before the
  first step, :data:`SNAPSHOTS_PER_EPOCH` times an epoch and at each epoch's end:

  ==========  ====================  ==========================================
  ``step``    ()                    the step after which it was taken
  ``epoch``   ()                    the epoch that step belongs to
  ``layer``   ()                    the convolution's index in the model
  ``weight``  (O, I, KH, KW)        its filters
  ``image``   (H, W)                the fixed image, as the model sees it
  ``maps``    (O, OH, OW)           the convolution's output for it
  ==========  ====================  ==========================================

  A model without a convolution has no snapshot.

Nothing here changes training: the feature maps come from a shallow copy of
the layer (its own weights, its own cache) under ``no_grad()``, after the
optimizer step, and nothing draws random numbers.
"""

import copy
import time

import numpy as np

from .. import backend as B
from .. import nn

#: Snapshots taken within each epoch (besides the one at its end), evenly spaced.
SNAPSHOTS_PER_EPOCH = 4


def first_convolution(model):
    """``(index, layer)`` of the model's first layer with a 4-D weight (a convolution), or None."""
    for i, layer in enumerate(model):
        weight = getattr(layer, "weight", None)
        if weight is not None and weight.data.ndim == 4:
            return i, layer
    return None


class LiveRecord:
    """Writes ``losses.csv`` and ``snapshot.npz`` of a run as it trains (see the module docstring).

    ``image`` is the fixed image, shape (1, C, H, W), on the model's device;
    ``steps_per_epoch`` the number of batches of an epoch; ``start_epoch``
    the first epoch trained now (after a checkpoint's). Call :meth:`step`
    after every step (``fit``'s ``on_step``), :meth:`epoch_end` after each
    epoch's files are written, :meth:`close` at the end.
    """

    def __init__(self, folder, model, image, steps_per_epoch, start_epoch=1):
        self.folder = folder
        self.steps_per_epoch = steps_per_epoch
        self.every = max(1, steps_per_epoch // (SNAPSHOTS_PER_EPOCH + 1))
        self.conv = first_convolution(model)
        self.image = image
        self.losses = folder.open_losses()
        self.snapshot(start_epoch - 1, (start_epoch - 1) * steps_per_epoch)

    def step(self, epoch, step, loss):
        """Record the loss of step ``step`` (from 1) of ``epoch``; take a snapshot every so many steps."""
        at = (epoch - 1) * self.steps_per_epoch + step
        self.losses.write(at, epoch, loss, time.time())
        if step % self.every == 0 and step < self.steps_per_epoch:
            self.snapshot(epoch, at)

    def epoch_end(self, epoch):
        self.snapshot(epoch, epoch * self.steps_per_epoch)

    def snapshot(self, epoch, at):
        if self.conv is None:
            return
        index, layer = self.conv
        probe = copy.copy(layer)  # the same weights; what its forward keeps stays off the training's layer
        with nn.no_grad():
            maps = probe(self.image)
        image = self.image[0].mean(axis=0)
        self.folder.write_snapshot({
            "step": np.array(at), "epoch": np.array(epoch), "layer": np.array(index),
            "weight": B.to_numpy(layer.weight.data).astype(np.float32),
            "image": B.to_numpy(image).astype(np.float32), "maps": B.to_numpy(maps[0]).astype(np.float32)})

    def close(self):
        self.losses.close()
