"""One training run: its settings, the loop, the run folder and everything written into it.

In dependency order:

==================  ==========================================================
``settings.py``     ``TrainConfig``: every setting, declared once
``loop.py``         the training loop and evaluation (``fit``, ``train_epoch``, ``evaluate``)
``health.py``       per-layer health figures and advice
``interrupt.py``    stopping cleanly on SIGINT / SIGTERM
``checkpoint.py``   everything needed to continue a run exactly
``modelfile.py``    model files: ``save_model``, ``load_model``
``runfolder.py``    the run folder: its files, its typed ``Summary``
``live.py``         what a run writes as it trains: step losses, first-layer snapshots
``run.py``          ``run_training``, ``resume_training``
==================  ==========================================================
"""

from .loop import EpochStats, TrainingDiverged, evaluate, fit, train_epoch
from .modelfile import load_model, save_model
from .run import resume_training, run_training
from .runfolder import RunFolder, Summary
from .settings import SETTINGS, TrainConfig

__all__ = ["EpochStats", "RunFolder", "SETTINGS", "Summary", "TrainConfig", "TrainingDiverged", "evaluate", "fit",
           "load_model", "resume_training", "run_training", "save_model", "train_epoch"]
