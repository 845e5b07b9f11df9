"""Errors that a user's settings cause, shared by every layer.

The verbs print such an error's message as one line instead of a traceback, so the message names
the setting (a config key, a model config field, a weights file) and says what would work. This
module imports nothing from amt, so every layer may use it.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting cannot work: a config value out of its range, two settings that exclude each
    other, weights that do not fit the configured model. The message names the key or file."""
