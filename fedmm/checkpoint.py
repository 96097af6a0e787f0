"""Checkpoints of the server after every round, so that a stopped run can be resumed.

A checkpoint is two files in the run directory, each replaced atomically:

* ``checkpoint.safetensors``: the global model (``model/<key>``) and every numpy array of the
  server state (``state/<key>``: update-vector sketches, global prototypes, ...), with the round
  number in the file's metadata;
* ``checkpoint.json``: the round number and the other server state values (client states, random
  generator states, objective counters) as JSON.

The model goes through safetensors, never pickle. ``checkpoint.json`` also records the SHA-256 of
the run's resolved config (:func:`config_digest`), so ``--resume`` can refuse a directory whose
``config.toml`` is not the config the checkpoint was trained under. Loading checks that both files
belong to the same round (a crash between the two writes leaves the previous, consistent pair
detectable) and turns every damaged file into a ``ValueError`` that names it and says what to do.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedmm.files import atomic_write

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
    config_sha256:
        :func:`config_digest` of the run's resolved config (``None`` in checkpoints of older
        versions, which did not record it).
    """

    server_round: int
    model: dict[str, np.ndarray]
    state: dict[str, Any]
    config_sha256: str | None = None


def config_digest(config_toml: str) -> str:
    """SHA-256 (hex) of a resolved config's TOML text (``RunConfig.to_toml()``).

    Parameters
    ----------
    config_toml:
        The config as ``RunConfig.to_toml`` writes it (the same text for the same resolved config).
    """
    return hashlib.sha256(config_toml.encode()).hexdigest()


def _start_over(run_dir: Path) -> str:
    """What to do about an unusable checkpoint in ``run_dir``."""
    return (
        f"restore it from a backup, or start the run over with `fedmm simulate --config "
        f"{run_dir / 'config.toml'} --out {run_dir} --overwrite`"
    )


def unreadable_state(run_dir: str | Path, err: Exception) -> ValueError:
    """The error for a ``checkpoint.json`` whose state values cannot be loaded back (garbage values
    where the strategy, policy or objective expect their own), naming the file.

    Parameters
    ----------
    run_dir:
        The run directory.
    err:
        What loading the values raised.
    """
    run_dir = Path(run_dir)
    return ValueError(
        f"checkpoint file {str(run_dir / CHECKPOINT_STATE)!r} is damaged (its server state cannot be "
        f"loaded: {type(err).__name__}: {err}); {_start_over(run_dir)}"
    )


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
    metadata = {"round": str(checkpoint.server_round)}
    atomic_write(run_dir / CHECKPOINT_ARRAYS, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    saved: dict[str, Any] = {"round": checkpoint.server_round, "state": values}
    if checkpoint.config_sha256 is not None:
        saved["config-sha256"] = checkpoint.config_sha256
    atomic_write(run_dir / CHECKPOINT_STATE, json.dumps(saved, indent=1))


def _saved_state(run_dir: Path) -> dict[str, Any]:
    """``checkpoint.json`` of ``run_dir``, checked to hold an integer ``round`` and a ``state``
    object; ``ValueError`` naming the file when either checkpoint file is missing or it is damaged."""
    missing = [name for name in (CHECKPOINT_ARRAYS, CHECKPOINT_STATE) if not (run_dir / name).is_file()]
    if missing:
        raise ValueError(
            f"{str(run_dir)!r} has no checkpoint ({', '.join(missing)} missing); resume a directory "
            "written by `fedmm simulate --out DIR` that finished at least round 0"
        )
    path = run_dir / CHECKPOINT_STATE
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"checkpoint file {str(path)!r} is damaged (not readable JSON: {err}); {_start_over(run_dir)}"
        ) from None
    if not isinstance(saved, dict):
        problem = "it holds no JSON object"
    elif not isinstance(saved.get("round"), int) or isinstance(saved["round"], bool) or saved["round"] < 0:
        problem = f"its 'round' is {saved.get('round', 'missing')!r}, not a round number"
    elif not isinstance(saved.get("state"), dict):
        problem = "its 'state' object is missing"
    else:
        return saved
    raise ValueError(f"checkpoint file {str(path)!r} is damaged ({problem}); {_start_over(run_dir)}")


def load_checkpoint(run_dir: str | Path, *, arrays: bool = True) -> Checkpoint:
    """The checkpoint in ``run_dir``; ``ValueError`` naming the file and what to do when there is
    none, a file is damaged (empty, garbage, truncated) or the two files disagree.

    Parameters
    ----------
    run_dir:
        A run directory written by ``fedmm simulate --out``.
    arrays:
        Read the arrays (model and array state). ``False`` checks the same damage from the
        safetensors header alone (a truncated file fails there) and returns no arrays: for the
        checks before a resume, which reads them once, later.
    """
    from safetensors import SafetensorError, safe_open

    run_dir = Path(run_dir)
    arrays_path = run_dir / CHECKPOINT_ARRAYS
    saved = _saved_state(run_dir)
    model: dict[str, np.ndarray] = {}
    state: dict[str, Any] = dict(saved["state"])
    try:
        with safe_open(str(arrays_path), framework="numpy") as f:
            arrays_round = int((f.metadata() or {}).get("round", -1))
            for key in f.keys() if arrays else ():
                group, _, name = key.partition("/")
                (model if group == "model" else state)[name] = f.get_tensor(key)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(
            f"checkpoint file {str(arrays_path)!r} is damaged (not a readable safetensors file: "
            f"{err}); {_start_over(run_dir)}"
        ) from None
    if arrays_round != int(saved["round"]):
        raise ValueError(
            f"checkpoint in {str(run_dir)!r} is inconsistent: {CHECKPOINT_ARRAYS} is from round {arrays_round}, "
            f"{CHECKPOINT_STATE} from round {saved['round']} (the run stopped while writing it); "
            f"{_start_over(run_dir)}"
        )
    digest = saved.get("config-sha256")
    return Checkpoint(
        server_round=int(saved["round"]),
        model=model,
        state=state,
        config_sha256=digest if isinstance(digest, str) else None,
    )


def check_model_fits(run_dir: str | Path, checkpoint: Checkpoint, expected: Mapping[str, tuple[int, ...]]) -> None:
    """``ValueError`` naming the checkpoint file unless its model has exactly the keys and shapes of
    the model the run's config builds.

    Parameters
    ----------
    run_dir:
        The run directory the checkpoint was loaded from (named in the message).
    checkpoint:
        The loaded checkpoint.
    expected:
        The shape of every state-dict key of the config's model.
    """
    run_dir = Path(run_dir)
    missing = sorted(set(expected) - set(checkpoint.model))
    extra = sorted(set(checkpoint.model) - set(expected))

    def fits(key: str) -> bool:
        shape, want = tuple(checkpoint.model[key].shape), tuple(expected[key])
        # a 0-d buffer (num_batches_tracked) travels as shape (1,), which load_state_dict accepts
        return shape == want or (want == () and shape == (1,))

    wrong = sorted(k for k in set(expected) & set(checkpoint.model) if not fits(k))
    if wrong:
        k = wrong[0]
        problem = f"{k!r} has shape {tuple(checkpoint.model[k].shape)} there, {tuple(expected[k])} in the model"
    elif missing:
        problem = f"it lacks the model's {missing[0]!r}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
    elif extra:
        problem = f"it has {extra[0]!r}, which the model lacks" + (
            f", and {len(extra) - 1} more" if len(extra) > 1 else ""
        )
    else:
        return
    raise ValueError(
        f"checkpoint file {str(run_dir / CHECKPOINT_ARRAYS)!r} does not fit the model that "
        f"{str(run_dir / 'config.toml')!r} builds ({problem}); it belongs to another run: "
        f"{_start_over(run_dir)}"
    )


def prefixed(prefix: str, state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` with every key under ``prefix`` (``"objective."``)."""
    return {f"{prefix}{k}": v for k, v in state.items()}


def unprefixed(prefix: str, state: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``state`` under ``prefix``, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
