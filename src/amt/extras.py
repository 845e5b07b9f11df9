"""Optional dependencies: one import helper and one error for a missing extra.

The core install (`pip install amt`) reads data, trains, evaluates and predicts. Features with
heavy or platform-specific dependencies live in extras (pyproject.toml
`[project.optional-dependencies]`): `export` (onnx, onnxruntime), `sweep` (optuna), `synth`
(moderngl), `wandb`, `detector` (mediapipe), `video` (imageio-ffmpeg). Code that needs one
imports it through `require` at the point of use, so a missing extra fails with one line that
names it; `amt.cli.main` prints that line instead of a traceback.

This module imports nothing from amt, so every layer may use it.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message says which extra provides it."""


def missing_extra_message(feature: str, package: str, extra: str) -> str:
    """The one-line message: what needs which package, and the pip command that installs it."""
    return f"{feature} needs {package}, from the '{extra}' extra: pip install 'amt[{extra}]'"


def require(module: str, extra: str, feature: str, package: str | None = None) -> ModuleType:
    """Import `module` or raise MissingExtraError naming `extra`.

    feature: what the user asked for, e.g. "amt sweep"; package: the pip name when it differs
    from the module name (default: the top-level module name).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        name = package or module.split(".")[0]
        raise MissingExtraError(missing_extra_message(feature, name, extra), name=exc.name) from exc
