"""Client/modality selection policies (pure numpy) and their registry.

``build_policy("cmsfed", {"delta": 2.0, "sketch-dim": 128}, seed=0)`` returns a ready policy.
Parameter names may be written kebab-case (run config) or snake_case; unknown names, wrong types
and out-of-range values raise ValueError naming the policy, the parameter and the nearest valid one.

Policies: ``all``, ``random``, ``powd`` (Power-of-Choice), ``divfl`` (DivFL facility location),
``cmsfed`` (CMSFed balanced greedy), ``oort`` (Oort: utility x speed penalty, exploration, pacer).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from fedmm.params import Label, check_search, parse, specs
from fedmm.registry import Registry
from fedmm.strategies.selection.base import (
    Assignment,
    ClientState,
    ClientUpdate,
    SelectionPolicy,
)
from fedmm.strategies.selection.basic import AllClients, PowerOfChoice, RandomClients
from fedmm.strategies.selection.cmsfed import CMSFed
from fedmm.strategies.selection.divfl import DivFL
from fedmm.strategies.selection.oort import Oort

P = TypeVar("P", bound=type[SelectionPolicy])

#: Every registered selection policy class, by name.
POLICIES: Registry[type[SelectionPolicy]] = Registry("selection policy")


def register_policy(cls: P) -> P:
    """Class decorator: make ``cls`` buildable by its ``name`` (ValueError if the name is taken)."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__} needs a non-empty class attribute 'name' to be registered")
    check_search(cls.Params, f"selection {name!r}")  # a search range outside the valid one fails at import
    POLICIES.add(name, cls)
    # a directly built Params names its fields as build_policy does (fedmm.params.Checked)
    cls.Params.label_format = f"parameter '{{}}' of selection {name!r}"
    cls.Params.field_names = {f: _kebab(f) for f in (s.name for s in specs(cls.Params))}
    return cls


def policy_names() -> list[str]:
    """Registered policy names, sorted."""
    return POLICIES.names()


def policy_class(name: str) -> type[SelectionPolicy]:
    """The class registered as ``name`` (ValueError with a did-you-mean hint otherwise)."""
    return POLICIES.get(name)


def parse_policy_params(name: str, params: Mapping[str, Any] | None, *, label: Label | None = None) -> Any:
    """The ``Params`` of policy ``name`` from config names (kebab-case or snake_case) and raw
    values, by :func:`fedmm.params.parse`.

    Parameters
    ----------
    name:
        A registered policy name.
    params:
        Parameter name -> raw value (``{"sketch-dim": 128}``); ``None`` for the defaults.
    label:
        Kebab-case name -> how messages name it; default ``"parameter '<name>' of selection '<policy>'"``.
    """
    cls = policy_class(name)
    aliases = {_kebab(s.name): s.name for s in specs(cls.Params)}
    return parse(cls.Params, params or {}, component=f"selection {name!r}", aliases=aliases, shown=_kebab, label=label)


def build_policy(name: str, params: Mapping[str, Any] | None = None, *, seed: int) -> SelectionPolicy:
    """Build the policy ``name`` with validated ``params`` and its own generator seeded by ``seed``."""
    return policy_class(name)(parse_policy_params(name, params), seed=seed)


def policy_params(name: str) -> list[tuple[str, Any, str]]:
    """``(parameter, default, help)`` of policy ``name``."""
    return [(_kebab(s.name), s.default, s.help) for s in specs(policy_class(name).Params)]


def _kebab(name: str) -> str:
    return str(name).replace("_", "-")


for _cls in (AllClients, RandomClients, PowerOfChoice, DivFL, CMSFed, Oort):
    register_policy(_cls)

__all__ = [
    "AllClients",
    "Assignment",
    "CMSFed",
    "ClientState",
    "ClientUpdate",
    "DivFL",
    "Oort",
    "PowerOfChoice",
    "RandomClients",
    "SelectionPolicy",
    "build_policy",
    "policy_class",
    "policy_names",
    "parse_policy_params",
    "policy_params",
    "register_policy",
]
