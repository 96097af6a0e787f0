"""fedmm: a federated multimodal learning simulator built on Flower, PyTorch and Ray.

The Python entry points (docs/python_api.md), imported on first use so that ``import fedmm``
stays light: ``fedmm.simulate(config) -> Run``, ``fedmm.load_run(dir) -> Run``,
``fedmm.compare_runs(runs) -> DataFrame``.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

#: Lazily imported attributes -> the module that defines them.
_LAZY = {
    "simulate": "fedmm.api",
    "compare_runs": "fedmm.api",
    "to_config": "fedmm.api",
    "load_run": "fedmm.reporting",
    "Run": "fedmm.reporting",
}

__all__ = ["Run", "compare_runs", "load_run", "simulate", "to_config", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fedmm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
