"""Models by name: the study's ``cnn`` and ``mlp`` (:mod:`npconv.models.presets`)."""

from .presets import DROPOUT_LOCATIONS, MODELS, build_model, cnn, mlp

__all__ = ["DROPOUT_LOCATIONS", "MODELS", "build_model", "cnn", "mlp"]
