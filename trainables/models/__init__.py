"""Every network a trial can train, built by name from one registry (DESIGN.md §3).

model = build_model("digits_cnn", num_classes=10, act="relu", dropout=0.1)
"""

from trainables.models.registry import (
    build_model,
    is_registered_model,
    list_models,
    model_arguments,
    model_config_kwargs,
    register_model,
)
from trainables.models import small_cnn as _small_cnn  # noqa: F401  (registers digits_cnn)
from trainables.models import vanillanet as _vanillanet  # noqa: F401  (registers vanillanet_5 … 13)
from trainables.models import external as _external  # noqa: F401  (registers the timm and torchvision models)

__all__ = [
    "build_model",
    "is_registered_model",
    "list_models",
    "model_arguments",
    "model_config_kwargs",
    "register_model",
]
