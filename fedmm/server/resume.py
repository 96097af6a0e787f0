"""Which run directory can be resumed, and its checkpoint: the checks of ``fedmm simulate --resume``
and of a ``flwr run`` with ``resume=true`` (a ServerApp killed mid-run), in one place."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from fedmm.checkpoint import Checkpoint, check_model_fits, config_digest, load_checkpoint
from fedmm.config import MOVED_KEYS, RunConfig, load_config
from fedmm.config_text import flatten, read_toml
from fedmm.results import CONFIG_FILE, SUMMARY_FILE, check_resumable_tables

if TYPE_CHECKING:
    import torch

log = logging.getLogger("fedmm")


def resume_config(run_dir: str | Path) -> RunConfig:
    """The resolved config of the run in ``run_dir``, checked to be resumable: its checkpoint is
    readable, was written under this ``config.toml`` (:func:`resume_checkpoint`), and the run has
    not completed. Every check runs here, before any dataset is loaded or Ray starts.

    Parameters
    ----------
    run_dir:
        A run directory written by ``fedmm simulate --out``.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise ValueError(f"{str(run_dir)!r} has no {CONFIG_FILE}; pass a directory written by `fedmm simulate --out`")
    moved = sorted(set(flatten(read_toml(config_path))) & set(MOVED_KEYS))
    if moved:
        raise ValueError(
            f"the run in {str(run_dir)!r} was written by an older fedmm: its {CONFIG_FILE} has config key "
            f"{moved[0]!r}, now {MOVED_KEYS[moved[0]]!r}, and its checkpoint records that config, so it cannot be "
            f"resumed; start it over (rename the key first) with `fedmm simulate --config {config_path} --out "
            f"{run_dir} --overwrite`"
        )
    run = load_config(config_path)
    last_round = resume_checkpoint(run_dir, run).server_round
    check_resumable_tables(run_dir, last_round)  # never lose the rows before the checkpoint
    summary = run_dir / SUMMARY_FILE
    if summary.is_file():
        try:
            status = json.loads(summary.read_text()).get("status")
        except (ValueError, AttributeError):  # damaged: resuming rewrites it
            status = None
        if status == "completed":
            raise ValueError(f"the run in {str(run_dir)!r} has completed (all its rounds); there is nothing to resume")
    log.info("resuming %s after round %d of %d", run_dir, last_round, run.num_server_rounds)
    return run


def resume_checkpoint(run_dir: str | Path, run: RunConfig, model: torch.nn.Module | None = None) -> Checkpoint:
    """The checkpoint in ``run_dir``, refused (``ValueError`` naming the file and what to do) when it
    is damaged, was written under another config than ``run``, or does not fit ``model``. Without
    ``model`` only the checks are made and no arrays are read (the checkpoint has none).

    Parameters
    ----------
    run_dir:
        The run directory holding ``checkpoint.*`` and ``config.toml``.
    run:
        The config the run is resumed under (``run_dir``'s ``config.toml``).
    model:
        The model ``run`` builds; when given, the checkpoint's keys and shapes must be its own.
    """
    run_dir = Path(run_dir)
    checkpoint = load_checkpoint(run_dir, arrays=model is not None)
    if checkpoint.config_sha256 is None:
        log.warning(
            "the checkpoint in %s does not record its config (an older fedmm wrote it); resuming under %s unchecked",
            run_dir,
            run_dir / CONFIG_FILE,
        )
    elif checkpoint.config_sha256 != config_digest(run.to_toml()):
        raise ValueError(
            f"{str(run_dir / CONFIG_FILE)!r} is not the config the checkpoint in {str(run_dir)!r} was trained under "
            "(it was edited or replaced since); restore the run's config.toml, or start the run over with "
            f"`fedmm simulate --config {run_dir / CONFIG_FILE} --out {run_dir} --overwrite`"
        )
    if model is not None:
        check_model_fits(run_dir, checkpoint, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    return checkpoint
