"""The Python entry point: :func:`simulate` a federation from a dict, a :class:`RunConfig` or a
TOML file and get its results back as a :class:`fedmm.reporting.Run` (pandas frames);
:func:`compare_runs` for several runs side by side. ``import fedmm`` reaches these lazily
(``fedmm.simulate``, ``fedmm.load_run``, ``fedmm.compare_runs``), so importing fedmm stays light.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from fedmm.config import RunConfig, load_config
from fedmm.config_text import flatten, read_toml
from fedmm.reporting import Run, load_run


def to_config(
    config: RunConfig | Mapping[str, Any] | str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> RunConfig:
    """A validated :class:`RunConfig` from any of the forms :func:`simulate` takes.

    Parameters
    ----------
    config:
        ``None`` (the defaults), a mapping of config keys (kebab-case; namespaces dotted,
        ``{"objective.lambda": 0.7}``, or nested, ``{"objective": {"name": "mnl"}}``), a
        :class:`RunConfig`, or the path of a TOML file.
    overrides:
        Config keys applied over ``config`` (as ``--set`` does).
    """
    if isinstance(config, RunConfig):
        values = config.to_flat()
    elif isinstance(config, (str, Path)):
        values = flatten(read_toml(config))
    elif config is None:
        values = {}
    elif isinstance(config, Mapping):
        values = flatten(config)
    else:
        raise TypeError(f"config must be a dict, a RunConfig or the path of a TOML file, not {type(config).__name__}")
    if not values and not overrides:
        return load_config()
    return RunConfig.from_mapping({**values, **flatten(overrides or {})})


def simulate(
    config: RunConfig | Mapping[str, Any] | str | Path | None = None,
    out: str | Path | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> Run:
    """Simulate the federation of ``config`` (on its ``engine``: Ray, or ``"inline"`` in this
    process) and return its results.

    Parameters
    ----------
    config:
        Config keys as a dict, a :class:`RunConfig`, or a TOML file's path (:func:`to_config`).
    out:
        The results directory; default: the config's ``out-dir``, else a new temporary directory
        (``result.out_dir`` says which).
    overrides:
        Config keys applied over ``config``.
    overwrite:
        Replace the results of an earlier run in ``out``.
    on_round:
        Called with each round's ``rounds.csv`` row as it finishes.

    Returns
    -------
    The run (:func:`fedmm.reporting.load_run` of its directory): ``out_dir``, ``config``,
    ``summary``, ``rounds`` and ``clients`` (pandas frames). A run that failed (no usable client
    reply) returns too, with ``summary["status"] == "failed"`` and the reason.
    """
    from fedmm.simulation import simulate as run_simulation

    run = to_config(config, overrides)
    target = out if out is not None else (run.out_dir or tempfile.mkdtemp(prefix="fedmm-run-"))
    run_simulation(run, target, overwrite=overwrite, on_round=on_round)
    return load_run(target)


def compare_runs(runs: Iterable[Run | str | Path], out: str | Path | None = None) -> pd.DataFrame:
    """The ``fedmm compare`` table of ``runs`` (:func:`fedmm.compare.compare_table`); with
    ``out``, also its Markdown, CSV and overlay plots there.

    Parameters
    ----------
    runs:
        Runs (as :func:`simulate` or :func:`fedmm.reporting.load_run` return them) or their
        directories (globs allowed).
    out:
        Where ``compare.md``, ``compare.csv`` and ``compare-<metric>.png`` go; ``None``: nowhere.
    """
    from fedmm.compare import compare_runs as compare_dirs

    return compare_dirs([r.out_dir if isinstance(r, Run) else r for r in runs], out)[0]


__all__ = ["Run", "compare_runs", "load_run", "simulate", "to_config"]
