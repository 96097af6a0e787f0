"""Experiment trackers: each logs a run's parameters, per-round metrics and plots to one tool, when
its config key switches it on (``tensorboard = true``, ``mlflow = true``); off by default.

:class:`fedmm.results.ResultsWriter` opens them (:func:`open_trackers`) and calls them where it
writes the run's files: :meth:`Tracker.log_round` after each round, :meth:`Tracker.finish` with the
summary and the plots, :meth:`Tracker.close` for a run that stopped early. One module per tool
(:mod:`fedmm.tracking.tensorboard_tracker`, :mod:`fedmm.tracking.mlflow_tracker`), imported only
when switched on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from fedmm.config import RunConfig

#: ``pip install`` line named by the error of a tracker whose package is missing.
INSTALL_HINT = "pip install 'fedmm[tracking]'"


class Tracker(Protocol):
    """What :class:`fedmm.results.ResultsWriter` calls on a tracker."""

    def log_round(self, row: Mapping[str, Any], client_rows: Sequence[Mapping[str, Any]]) -> None:
        """Log one round (its ``rounds.csv`` row and its ``clients.csv`` rows)."""

    def finish(self, summary: Mapping[str, Any], plots: Sequence[Path], out_dir: Path) -> None:
        """Log the summary and the plots, and end the tracker's run as finished."""

    def close(self, status: str) -> None:
        """End the tracker's run of a run that stopped (``failed``, ``interrupted``)."""


def open_trackers(out_dir: Path, config: RunConfig, *, resume_after: int | None = None) -> list[Tracker]:
    """The trackers that ``config`` switches on, each started for the run in ``out_dir``.

    Parameters
    ----------
    out_dir:
        The run directory.
    config:
        The resolved config (its ``tensorboard`` and ``mlflow`` keys).
    resume_after:
        ``None`` for a new run; else the last round of the checkpoint a resumed run continues.

    Raises
    ------
    ImportError
        A switched-on tracker's package is missing; the message names the key and the install line.
    """
    trackers: list[Tracker] = []
    if config.tensorboard:
        from fedmm.tracking.tensorboard_tracker import TensorBoardTracker

        trackers.append(TensorBoardTracker(out_dir, config, resume_after=resume_after))
    if config.mlflow:
        from fedmm.tracking.mlflow_tracker import MlflowTracker

        trackers.append(MlflowTracker(out_dir, config, resume_after=resume_after))
    return trackers


def require(module: str, key: str) -> Any:
    """Import ``module`` for the tracker of config key ``key``, or raise one ImportError saying
    how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"config key '{key}' = true needs the {module.split('.')[0]} package; install it with "
            f"{INSTALL_HINT} or set {key} = false"
        ) from None


def round_metrics(row: Mapping[str, Any], client_rows: Sequence[Mapping[str, Any]] = ()) -> dict[str, float]:
    """A round's numbers as tracker metrics: every finite number of its ``rounds.csv`` row (test
    accuracy, F1 and loss, multimodal and per modality, training loss, bytes, seconds, ...) but
    ``round`` itself, plus ``clients/trained/<m>``: how many clients trained modality ``m`` with an
    ``ok`` reply this round (from its ``clients.csv`` rows).

    Parameters
    ----------
    row:
        The round's ``rounds.csv`` row.
    client_rows:
        The clients' rows that came with it (the update pass's rows have round 0 and are not counted).
    """
    out: dict[str, float] = {}
    for key, value in row.items():
        if key == "round" or isinstance(value, bool):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out[str(key)] = number
    server_round = int(row["round"])
    for client in client_rows:
        if int(client.get("round", -1)) != server_round or client.get("status") != "ok":
            continue
        for modality in str(client.get("modalities-trained") or "").split("+"):
            if modality:
                out[f"clients/trained/{modality}"] = out.get(f"clients/trained/{modality}", 0.0) + 1.0
    return out


def flat_params(config: RunConfig) -> dict[str, str]:
    """The config as ``key -> text`` parameters (every key, defaults included)."""
    from dataclasses import fields

    from fedmm.params import config_name

    out = {}
    for key, value in config.to_flat().items():
        out[key] = ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
    for f in fields(config):  # the tracking keys themselves, left out of to_flat at their defaults
        if f.name in ("tensorboard", "mlflow", "mlflow_uri", "mlflow_experiment"):
            out.setdefault(config_name(f.name), str(getattr(config, f.name)))
    return out
