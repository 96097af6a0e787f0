"""Client/modality selection policies (pure numpy) and their registry.

``build_policy("cmsfed", {"delta": 2.0, "sketch-dim": 128}, seed=0)`` returns a ready policy.
Parameter names are kebab-case, as config keys (:func:`fedmm.params.config_name`; the snake_case
spelling is refused naming it); unknown names, wrong types and out-of-range values raise ValueError
naming the policy, the parameter and the nearest valid one.

Policies: ``all``, ``random``, ``powd`` (Power-of-Choice), ``divfl`` (DivFL facility location),
``cmsfed`` (CMSFed balanced greedy), ``oort`` (Oort: utility x speed penalty, exploration, pacer).
"""

from __future__ import annotations

# One import per policy module; importing registers it.
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
from fedmm.strategies.selection.registry import (
    POLICIES,
    build_policy,
    parse_policy_params,
    policy_class,
    policy_names,
    policy_params,
    register_policy,
)

__all__ = [
    "AllClients",
    "Assignment",
    "CMSFed",
    "ClientState",
    "ClientUpdate",
    "DivFL",
    "Oort",
    "POLICIES",
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
