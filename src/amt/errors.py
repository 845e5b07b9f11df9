"""Errors that a user's settings cause, shared by every layer, and the device check every verb
runs on its --device / training.device.

The verbs print such an error's message as one line instead of a traceback, so the message names
the setting (a config key, a model config field, a weights file, a device) and says what would
work. This module imports nothing from amt, so every layer may use it.
"""

from __future__ import annotations

import math
from numbers import Real

import torch


class ConfigError(ValueError):
    """A setting cannot work: a config value out of its range, two settings that exclude each
    other, weights that do not fit the configured model. The message names the key or file."""


def finite_number(value: object) -> bool:
    """Whether a setting's value is a real, finite number (not a bool, a string, NaN or inf): the
    first half of every numeric range check (config dataclasses, crop and contact settings)."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def require(ok: bool, setting: str, value: object, expected: str) -> None:
    """ConfigError naming the setting as the user writes it (`config training.grad_accum_steps=0:
    expected >= 1`, `config model.hidden_dim=30: ...`) unless ok: every config dataclass's range
    checks."""
    if not ok:
        raise ConfigError(f"config {setting}={value!r}: expected {expected}")


def check_device(name: str, where: str | None = None) -> None:
    """Raise ConfigError when `name` ("cuda", "cuda:1", ...) names a device this machine lacks;
    "auto" and "cpu" always pass. `where`: how the user gave it, for the message (default
    "--device NAME"; the trainer passes "training.device=NAME")."""
    if name == "auto":
        return
    setting = where or f"--device {name}"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"{setting}: not a device name ({exc})") from None
    if device.type != "cuda":
        return
    if not torch.cuda.is_available():
        why = "this torch is built without CUDA" if torch.version.cuda is None else "no GPU is visible"
        raise ConfigError(f"{setting}: CUDA is not available on this machine ({why}); use cpu")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"{setting}: only {torch.cuda.device_count()} GPU(s) are visible")
