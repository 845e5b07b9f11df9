"""Reading pickles a user hands us without running their code (HO-3D meta files, MANO models).

`find_class` is the only way a pickle reaches code, so `RestrictedUnpickler` admits only the
globals numpy's own arrays need plus what a caller lists; any other global raises
`pickle.UnpicklingError`. Imports nothing from amt, so every layer may use it.
"""

from __future__ import annotations

import codecs
import copyreg
import pickle
from typing import Any

import numpy as np


def _numpy_constructors() -> dict[tuple[str, str], Any]:
    """The callables numpy's own pickles reference, found from live objects so that both the
    `numpy.core` (numpy 1) and the `numpy._core` (numpy 2) module paths work."""
    reconstruct = np.zeros(1).__reduce__()[0]
    scalar = np.float64(1.0).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    allowed: dict[tuple[str, str], Any] = {}
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = frombuffer
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    # protocol-2 pickles written by Python 3 encode bytes as _codecs.encode(str, "latin1")
    allowed[("_codecs", "encode")] = codecs.encode
    for module in ("builtins", "__builtin__"):
        for name, obj in (("set", set), ("frozenset", frozenset), ("bytearray", bytearray), ("complex", complex)):
            allowed[(module, name)] = obj
    return allowed


NUMPY_GLOBALS = _numpy_constructors()


def _object_new_only(obj: Any, name: str) -> Any:
    """`getattr` as Python 3 pickles `object.__new__` (getattr(object, "__new__")); any other use
    is refused, since a free getattr would let a pickle walk from an allowed object to any code."""
    if obj is object and name == "__new__":
        return object.__new__
    raise pickle.UnpicklingError(f"refused getattr({obj!r}, {name!r})")


# Python 2 new-style objects (MANO's chumpy and scipy.sparse values) are rebuilt through
# copy_reg._reconstructor(cls, object, state); safe because `cls` itself must pass find_class.
OBJECT_GLOBALS = {
    ("copy_reg", "_reconstructor"): copyreg._reconstructor,
    ("copyreg", "_reconstructor"): copyreg._reconstructor,
    ("__builtin__", "object"): object,
    ("builtins", "object"): object,
    ("__builtin__", "getattr"): _object_new_only,
    ("builtins", "getattr"): _object_new_only,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler admitting numpy arrays, numpy scalars, plain containers and `extra` globals
    ({(module, name): object}); every other global is refused."""

    def __init__(self, file: Any, extra: dict[tuple[str, str], Any] | None = None, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.allowed = {**NUMPY_GLOBALS, **(extra or {})}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: only numpy arrays and plain containers")
