"""A restricted unpickler for the HAPT data file: it never runs code from the pickle.

The file holds pandas-1.0 DataFrames. Instead of pandas, every pandas class becomes an inert stub
that keeps its pickled state; numpy arrays are rebuilt by numpy's own reconstructor. Any other
global (``os.system``, ``builtins.eval``, ...) raises :class:`pickle.UnpicklingError`.
"""

from __future__ import annotations

import importlib
import pickle
from typing import Any, BinaryIO

import numpy as np

_NUMPY_ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}
_BUILTINS_ALLOWED = {"object": object, "slice": slice}


class _Stub:
    """Stands in for a pandas object; keeps the state the pickle sets."""

    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _reconstruct_object(cls: type, base: type, state: Any) -> Any:
    return cls.__new__(cls)


def _new_index(cls: type, data: Any) -> Any:
    return data


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and pandas-shaped stubs; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("pandas"):
            return _new_index if name == "_new_Index" else type(name, (_Stub,), {})
        if (module, name) == ("copy_reg", "_reconstructor") or (module, name) == ("copyreg", "_reconstructor"):
            return _reconstruct_object
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            core = "numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray"
            return importlib.import_module(core)._reconstruct
        if (module, name) in _NUMPY_ALLOWED:
            return super().find_class(module, name)
        if module in ("__builtin__", "builtins") and name in _BUILTINS_ALLOWED:
            return _BUILTINS_ALLOWED[name]
        raise pickle.UnpicklingError(f"blocked global {module}.{name}: this file may only hold numpy and pandas data")


def restricted_load(file: BinaryIO) -> Any:
    """Load a pickle through :class:`RestrictedUnpickler` (latin1 for Python-2-era numpy bytes)."""
    return RestrictedUnpickler(file, encoding="latin1").load()
