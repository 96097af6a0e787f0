"""What software produced a run: ``summary.json``'s ``software`` field.

The same seed gives bit-identical numbers only on the same software and processor: a run near a
threshold (the collapse rule, a tie between tuning trials) can fall on either side of it after a
float-level change in a library, so every run names the versions it was computed with. On the CPU,
torch picks its kernels by the processor's vector instructions (AVX2, AVX512): the same run on the
same versions differs in the 8th digit between kernel sets (``ATEN_CPU_CAPABILITY=default``
against ``avx2``), so the processor and torch's kernel set are named too.
"""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

#: The packages whose versions change a run's numbers or its protocol.
PACKAGES = ("fedmm", "torch", "numpy", "flwr")


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`);
    ``"unknown"`` when neither names it."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip() or "unknown"
    except OSError:
        pass
    return platform.processor() or "unknown"


def software() -> dict[str, str]:
    """Python's version, the machine architecture, the processor (:func:`cpu_model`) and the
    installed version of each of :data:`PACKAGES` (``"not installed"`` for one that is missing);
    torch's with its build tag (``2.14.1+cu130``, ``2.13.0+cpu``), which the package metadata leaves
    out, and the CPU kernel set torch runs (``torch-cpu-capability``: ``AVX2``, ``AVX512``)."""
    versions = {"python": platform.python_version(), "machine": platform.machine(), "cpu": cpu_model()}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    if versions.get("torch", "not installed") != "not installed":
        import torch

        versions["torch"] = torch.__version__
        versions["torch-cpu-capability"] = torch.backends.cpu.get_cpu_capability()
    return versions
