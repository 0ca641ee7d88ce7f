"""Training: recipes (FLAN-T5 seq2seq first). Importing this package loads neither torch nor transformers;
the training loop imports them when it runs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modelyard.training._data import Example, Splits, load_splits
from modelyard.training._eval import EvalReport, Scores, evaluate, generate, score
from modelyard.training._exampledata import make_examples, write_dataset
from modelyard.training._model import (
    DeviceCaps,
    autocast_context,
    build_model,
    check_pretrained,
    load_model,
    make_grad_scaler,
    resolve_precision,
    save_model,
    verify_model_dir,
)
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
from modelyard.training._tokenize import (
    TokenStats,
    build_tokenizer,
    check_tokenization,
    encode_examples,
    validate_tokenization,
)

__all__ = [
    "EVAL_METRICS",
    "PRESETS",
    "CheckpointSection",
    "DataSection",
    "DeviceCaps",
    "DistributedSection",
    "EarlyStopping",
    "EvalReport",
    "EvaluationSection",
    "Example",
    "GenerationSettings",
    "Hyperparameters",
    "JobInfo",
    "ModelSection",
    "Recipe",
    "Scores",
    "SearchParam",
    "SplitRatios",
    "Splits",
    "T5Dims",
    "TokenStats",
    "TokenizerSection",
    "TrainSection",
    "Worker",
    "attach_run",
    "autocast_context",
    "build_model",
    "build_tokenizer",
    "cancel_job",
    "check_data",
    "check_pretrained",
    "check_tokenization",
    "encode_examples",
    "evaluate",
    "generate",
    "get_job",
    "iter_logs",
    "list_jobs",
    "load_model",
    "load_recipe",
    "load_splits",
    "make_examples",
    "make_grad_scaler",
    "parse_recipe",
    "resolve_precision",
    "save_model",
    "score",
    "submit_job",
    "validate_tokenization",
    "verify_model_dir",
    "write_dataset",
]

# The job queue needs the metadata store (SQLAlchemy); it loads on first use so that importing this package
# stays light (a test checks that only pydantic and PyYAML come with it).
_JOBS = frozenset(
    {"JobInfo", "Worker", "attach_run", "cancel_job", "get_job", "iter_logs", "list_jobs", "submit_job"}
)

if TYPE_CHECKING:
    from modelyard.training._jobs import (
        JobInfo,
        Worker,
        attach_run,
        cancel_job,
        get_job,
        iter_logs,
        list_jobs,
        submit_job,
    )


def __getattr__(name: str) -> Any:
    if name in _JOBS:
        from modelyard.training import _jobs

        return getattr(_jobs, name)
    raise AttributeError(f"module 'modelyard.training' has no attribute {name!r}")
