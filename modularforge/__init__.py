"""modularforge: train a language model in parts.

A frozen shared trunk (embedding, positions, every layer's attention, output norm
and tied LM head) plus small experts (one FFN block per layer), trained one at a
time and later assembled into a Mixture of Experts.

The folders follow the book, from the model up; each imports only those above it
in this list (tests/package/test_package_layout.py checks it), with one exception
allowed by name: `ModuleTrainerModel.save_expert` / `.load_expert` (the design
document's API) import `files.checkpoint` when called:

* `model`: the trunk, the expert, the harness that trains one (chapters 1, 3);
* `files`: checkpoints and crash-safe, checked files (chapters 4, 7);
* `lean`: the lean expert step (chapter 6b);
* `measure`: memory, peaks, FLOPs, speed (chapters 2, 5, 6, 6b);
* `training`: data, the two phases, resume, evaluation, generation;
* `mixture`: routers, branching, mixing (chapters 8, 11);
* `pipeline`: the whole run, resumable, and its distributed runner (chapters 8-10);
* `plots`: charts for the measurement chapters;
* `cli`: `python -m modularforge COMMAND`;
* `chapters`: helpers for one chapter's figures, named after it.

The names below are the public API, importable as `from modularforge import ...`.
"""

__version__ = "0.1.0"

from modularforge.files.checkpoint import load_expert, load_shared, save_expert, save_shared
from modularforge.lean.step import LEAN_EXPERT, LeanOptions, lean_training_step
from modularforge.measure.memory import (
    measure_training_step,
    memory_budget,
    parameter_counts,
    static_budget,
)
from modularforge.measure.peak import measure_peak, peak_budget
from modularforge.mixture.moe import MixtureOfExperts
from modularforge.model.config import ModelConfig
from modularforge.model.expert import ExpertFFN, build_expert
from modularforge.model.shared import SharedComponents
from modularforge.model.trainer_model import ModuleTrainerModel
from modularforge.pipeline.run import PipelineSettings, run_pipeline
from modularforge.training.data import load_domain, load_tokenizer
from modularforge.training.generate import generate_text
from modularforge.training.train import TrainSettings, train_expert, train_shared

__all__ = [
    "LEAN_EXPERT",
    "ExpertFFN",
    "LeanOptions",
    "MixtureOfExperts",
    "ModelConfig",
    "ModuleTrainerModel",
    "PipelineSettings",
    "SharedComponents",
    "TrainSettings",
    "build_expert",
    "generate_text",
    "lean_training_step",
    "load_domain",
    "load_expert",
    "load_shared",
    "load_tokenizer",
    "measure_peak",
    "measure_training_step",
    "memory_budget",
    "parameter_counts",
    "peak_budget",
    "run_pipeline",
    "save_expert",
    "save_shared",
    "static_budget",
    "train_expert",
    "train_shared",
]
