"""modularforge: train a language model in parts.

A frozen shared trunk (embedding, positions, every layer's attention, output norm
and tied LM head) plus small experts (one FFN block per layer), trained one at a
time and later assembled into a Mixture of Experts.
"""

from .config import ModelConfig
from .expert import ExpertFFN, build_expert
from .memory import measure_training_step, memory_budget
from .shared import SharedComponents
from .trainer_model import ModuleTrainerModel

__all__ = [
    "ExpertFFN",
    "ModelConfig",
    "ModuleTrainerModel",
    "SharedComponents",
    "build_expert",
    "measure_training_step",
    "memory_budget",
]

__version__ = "0.1.0"
