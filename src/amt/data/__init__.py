"""amt.data: dataset readers, the training cache, augmentation.

The dataset interface (docs/datasets.md) is importable from here: `HandObjectDataset`,
`open_dataset`, `DatasetError` (from `amt.data.dataset`). Each name is imported on first access,
so importing a light submodule such as `amt.data.ycb` does not load every reader.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_API = {"HandObjectDataset": "amt.data.dataset", "open_dataset": "amt.data.dataset", "DatasetError": "amt.data.dataset"}
__all__ = ["DatasetError", "HandObjectDataset", "open_dataset"]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time `__getattr__` imports on demand
    from amt.data.dataset import DatasetError, HandObjectDataset, open_dataset


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'amt.data' has no attribute {name!r}")
