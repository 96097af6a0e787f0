"""Reading a run config's text: TOML files (every problem one error naming the file), nested tables
as dotted keys, and ``key=value`` overrides. No fedmm imports: :mod:`fedmm.config` builds on it."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def read_toml(path: str | Path) -> dict[str, Any]:
    """The table in the TOML file at ``path``; every problem with the file is one ValueError naming it.

    Parameters
    ----------
    path:
        A UTF-8 TOML file (not a directory).
    """
    path = Path(path)
    name = str(path)
    if path.is_dir():
        raise ValueError(f"config file {name!r} is a directory; pass the path of a TOML file")
    if not path.exists():
        raise ValueError(f"config file {name!r} does not exist; pass the path of a TOML file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"config file {name!r} is not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    except OSError as err:
        raise ValueError(
            f"config file {name!r} cannot be read ({err.strerror}); check its path and permissions"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"config file {name!r} is not valid TOML: {err}") from None


def flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"objective": {"name": "mnl", "lambda": 0.7}}`` -> ``{"objective.name": ..., "objective.lambda": ...}``."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{full}."))
        else:
            out[full] = value
    return out


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Parse ``["lr=0.1", "objective=mnl"]``; a value that is not a TOML literal stays a string."""
    out: dict[str, Any] = {}
    for item in items:
        key, eq, raw = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"override {item!r} is not of the form key=value (e.g. --set num-server-rounds=5)")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        out[key.strip()] = value
    return out
