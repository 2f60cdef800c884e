"""Models: the presets by name (:mod:`npconv.models.presets`) and models described as layers in an architecture file
(:mod:`npconv.models.spec`)."""

from .presets import (DROPOUT_LOCATIONS, LAYER_PRESETS, MODELS, build_model, cnn, cnn_bn_layers, dropout_fits,
                      lenet5_layers, mlp, model_layers)
from .spec import (INPUT_SHAPE, ModelSpecError, check_layers, is_architecture_file, model_label,
                   read_architecture_file)

__all__ = ["DROPOUT_LOCATIONS", "INPUT_SHAPE", "LAYER_PRESETS", "MODELS", "ModelSpecError", "build_model",
           "check_layers", "cnn", "cnn_bn_layers", "dropout_fits", "is_architecture_file",
           "lenet5_layers", "mlp", "model_label", "model_layers", "read_architecture_file"]
