"""Client/modality selection policies (pure numpy) and their registry.

``build_policy("cmsfed", {"delta": 2.0, "sketch-dim": 128}, seed=0)`` returns a ready policy.
Parameter names may be written kebab-case (run config) or snake_case; unknown names, wrong types
and out-of-range values raise ValueError naming the policy, the parameter and the nearest valid one.

Policies: ``all``, ``random``, ``powd`` (Power-of-Choice), ``divfl`` (DivFL facility location),
``cmsfed`` (CMSFed balanced greedy).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from fedmm.strategies.selection.base import (
    Assignment,
    ClientState,
    ClientUpdate,
    SelectionPolicy,
    _did_you_mean,
    params_help,
    validate_params,
)
from fedmm.strategies.selection.basic import AllClients, PowerOfChoice, RandomClients
from fedmm.strategies.selection.cmsfed import CMSFed
from fedmm.strategies.selection.divfl import DivFL

P = TypeVar("P", bound=type[SelectionPolicy])

_REGISTRY: dict[str, type[SelectionPolicy]] = {}


def register_policy(cls: P) -> P:
    """Class decorator: make ``cls`` buildable by its ``name`` (ValueError if the name is taken)."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__} needs a non-empty class attribute 'name' to be registered")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"selection policy {name!r} is already registered by {_REGISTRY[name].__name__}")
    _REGISTRY[name] = cls
    return cls


def policy_names() -> list[str]:
    """Registered policy names, sorted."""
    return sorted(_REGISTRY)


def policy_class(name: str) -> type[SelectionPolicy]:
    """The class registered as ``name`` (ValueError with a did-you-mean hint otherwise)."""
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown selection policy {name!r}{_did_you_mean(str(name), policy_names())} "
            f"Valid policies: {', '.join(policy_names())}"
        )
    return _REGISTRY[name]


def build_policy(name: str, params: Mapping[str, Any] | None = None, *, seed: int) -> SelectionPolicy:
    """Build the policy ``name`` with validated ``params`` and its own generator seeded by ``seed``."""
    cls = policy_class(name)
    return cls(validate_params(name, cls.Params, params), seed=seed)


def policy_params(name: str) -> list[tuple[str, Any, str]]:
    """``(parameter, default, help)`` of policy ``name``."""
    return params_help(policy_class(name).Params)


for _cls in (AllClients, RandomClients, PowerOfChoice, DivFL, CMSFed):
    register_policy(_cls)

__all__ = [
    "AllClients",
    "Assignment",
    "CMSFed",
    "ClientState",
    "ClientUpdate",
    "DivFL",
    "PowerOfChoice",
    "RandomClients",
    "SelectionPolicy",
    "build_policy",
    "policy_class",
    "policy_names",
    "policy_params",
    "register_policy",
]
