"""Training: recipes (FLAN-T5 seq2seq first). Importing this package loads neither torch nor transformers;
the training loop imports them when it runs."""

from __future__ import annotations

from modelyard.training._exampledata import make_examples, write_dataset
from modelyard.training._recipe import (
    EVAL_METRICS,
    PRESETS,
    CheckpointSection,
    DataSection,
    DistributedSection,
    EarlyStopping,
    EvaluationSection,
    GenerationSettings,
    Hyperparameters,
    ModelSection,
    Recipe,
    SearchParam,
    SplitRatios,
    T5Dims,
    TokenizerSection,
    TrainSection,
    check_data,
    load_recipe,
    parse_recipe,
)

__all__ = [
    "EVAL_METRICS",
    "PRESETS",
    "CheckpointSection",
    "DataSection",
    "DistributedSection",
    "EarlyStopping",
    "EvaluationSection",
    "GenerationSettings",
    "Hyperparameters",
    "ModelSection",
    "Recipe",
    "SearchParam",
    "SplitRatios",
    "T5Dims",
    "TokenizerSection",
    "TrainSection",
    "check_data",
    "load_recipe",
    "make_examples",
    "parse_recipe",
    "write_dataset",
]
