"""One trainer for every method: an objective (SFT, RL) times a parameterization (SVF, LoRA, any PEFT method, full, mask)."""

from .config import LoraSettings, TrainConfig
from .parameterizations import count_parameters, prepare, trainable_parameters
from .trainer import TrainResult, train

__all__ = [
    "LoraSettings",
    "TrainConfig",
    "TrainResult",
    "count_parameters",
    "prepare",
    "train",
    "trainable_parameters",
]
