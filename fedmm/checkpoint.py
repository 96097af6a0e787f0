"""Checkpoints of the server after every round, so that a stopped run can be resumed.

A checkpoint is two files in the run directory, each replaced atomically:

* ``checkpoint.safetensors``: the global model (``model/<key>``) and every numpy array of the
  server state (``state/<key>``: update-vector sketches, global prototypes, ...), with the round
  number in the file's metadata;
* ``checkpoint.json``: the round number and the other server state values (client states, random
  generator states, objective counters) as JSON.

The model goes through safetensors, never pickle. Loading checks that both files belong to the same
round (a crash between the two writes leaves the previous, consistent pair detectable).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CHECKPOINT_ARRAYS = "checkpoint.safetensors"
CHECKPOINT_STATE = "checkpoint.json"


@dataclass
class Checkpoint:
    """The server after ``server_round``.

    Parameters
    ----------
    server_round:
        The last finished round (0 = only the initial evaluation).
    model:
        The global model's state, as numpy arrays by state-dict key.
    state:
        Strategy, policy and objective state by key: numpy arrays, numbers and strings.
    """

    server_round: int
    model: dict[str, np.ndarray]
    state: dict[str, Any]


def save_checkpoint(run_dir: str | Path, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` into ``run_dir`` (arrays first, then the JSON that names their round)."""
    from safetensors.numpy import save_file

    run_dir = Path(run_dir)
    tensors = {f"model/{k}": np.ascontiguousarray(v) for k, v in checkpoint.model.items()}
    values: dict[str, Any] = {}
    for k, v in checkpoint.state.items():
        if isinstance(v, np.ndarray):
            tensors[f"state/{k}"] = np.ascontiguousarray(v)
        else:
            values[k] = v.item() if isinstance(v, np.generic) else v
    with tempfile.NamedTemporaryFile(dir=run_dir, suffix=".tmp", delete=False) as tmp:
        tmp_path = tmp.name
    save_file(tensors, tmp_path, metadata={"round": str(checkpoint.server_round)})
    os.replace(tmp_path, run_dir / CHECKPOINT_ARRAYS)
    text = json.dumps({"round": checkpoint.server_round, "state": values}, indent=1)
    with tempfile.NamedTemporaryFile("w", dir=run_dir, suffix=".tmp", delete=False) as tmp:
        tmp.write(text)
    os.replace(tmp.name, run_dir / CHECKPOINT_STATE)


def _saved_state(run_dir: Path) -> dict[str, Any]:
    """``checkpoint.json`` of ``run_dir``; ``ValueError`` when either checkpoint file is missing."""
    missing = [name for name in (CHECKPOINT_ARRAYS, CHECKPOINT_STATE) if not (run_dir / name).is_file()]
    if missing:
        raise ValueError(
            f"{str(run_dir)!r} has no checkpoint ({', '.join(missing)} missing); resume a directory "
            "written by `fedmm simulate --out DIR` that finished at least round 0"
        )
    return json.loads((run_dir / CHECKPOINT_STATE).read_text())


def checkpoint_round(run_dir: str | Path) -> int:
    """The round of the checkpoint in ``run_dir``, without reading its arrays."""
    return int(_saved_state(Path(run_dir))["round"])


def load_checkpoint(run_dir: str | Path) -> Checkpoint:
    """The checkpoint in ``run_dir``; ``ValueError`` naming the problem when there is none or the
    two files disagree."""
    from safetensors import safe_open

    run_dir = Path(run_dir)
    arrays_path = run_dir / CHECKPOINT_ARRAYS
    saved = _saved_state(run_dir)
    model: dict[str, np.ndarray] = {}
    state: dict[str, Any] = dict(saved["state"])
    with safe_open(str(arrays_path), framework="numpy") as f:
        arrays_round = int((f.metadata() or {}).get("round", -1))
        for key in f.keys():
            group, _, name = key.partition("/")
            (model if group == "model" else state)[name] = f.get_tensor(key)
    if arrays_round != int(saved["round"]):
        raise ValueError(
            f"checkpoint in {str(run_dir)!r} is inconsistent: {CHECKPOINT_ARRAYS} is from round {arrays_round}, "
            f"{CHECKPOINT_STATE} from round {saved['round']} (the run stopped while writing it); "
            "rerun the experiment from scratch"
        )
    return Checkpoint(server_round=int(saved["round"]), model=model, state=state)


def prefixed(prefix: str, state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` with every key under ``prefix`` (``"objective."``)."""
    return {f"{prefix}{k}": v for k, v in state.items()}


def unprefixed(prefix: str, state: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``state`` under ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
