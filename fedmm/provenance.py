"""What software produced a run: ``summary.json``'s ``software`` field.

The same seed gives bit-identical numbers only on the same software: a run near a threshold (the
collapse rule, a tie between tuning trials) can fall on either side of it after a float-level
change in a library, so every run names the versions it was computed with.
"""

from __future__ import annotations

import platform
from importlib import metadata

#: The packages whose versions change a run's numbers or its protocol.
PACKAGES = ("fedmm", "torch", "numpy", "flwr")


def software() -> dict[str, str]:
    """Python's version, the machine architecture and the installed version of each of
    :data:`PACKAGES` (``"not installed"`` for one that is missing); torch's with its build tag
    (``2.14.1+cu130``, ``2.13.0+cpu``), which the package metadata leaves out."""
    versions = {"python": platform.python_version(), "machine": platform.machine()}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    if versions.get("torch", "not installed") != "not installed":
        import torch

        versions["torch"] = torch.__version__
    return versions
