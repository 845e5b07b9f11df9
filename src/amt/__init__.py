"""AMT, the Advanced Manipulation Transformer.

3D hand (21 joints, confidences, MANO shape), 6-DoF object poses and hand-object
contacts from one RGB image. Units: metres in data, millimetres in reported metrics.

The public API (what the notebooks and the README use):

    build_model(preset, **overrides) -> AMT          amt.models
    load_model(checkpoint_folder) -> AMT             amt.checkpoint
    load_run_config(name, overrides) -> RunConfig    amt.training.config
    train(run_config) -> Trainer                     amt.training.trainer
    evaluate(model, dataset, models_dir) -> dict     amt.evaluation.evaluator
    Predictor(model) / Predictor.from_checkpoint     amt.inference.predictor

Each name is imported on first access, so `import amt` (and every `amt` command) does not pay
for torch, Hydra and the model code it may not need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that owns it
_API = {
    "build_model": "amt.models",
    "load_model": "amt.checkpoint",
    "load_run_config": "amt.training.config",
    "train": "amt.training.trainer",
    "evaluate": "amt.evaluation.evaluator",
    "Predictor": "amt.inference.predictor",
}
__all__ = ["Predictor", "__version__", "build_model", "evaluate", "load_model", "load_run_config", "train"]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time `__getattr__` imports on demand
    from amt.checkpoint import load_model
    from amt.evaluation.evaluator import evaluate
    from amt.inference.predictor import Predictor
    from amt.models import build_model
    from amt.training.config import load_run_config
    from amt.training.trainer import train


def __getattr__(name: str) -> Any:
    """Import a public-API name from its owner on first access (PEP 562) and keep it."""
    if name not in _API:
        raise AttributeError(f"module 'amt' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
