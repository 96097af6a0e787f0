"""The selection policy registry: policies by name, built from plain parameter mappings.

A policy is a subclass of :class:`~fedmm.strategies.selection.base.SelectionPolicy` with a nested
``Params`` dataclass (a :class:`fedmm.params.Checked` one); ``@register_policy("<name>")`` makes it
available to :func:`build_policy`, which validates its parameters with :func:`fedmm.params.parse`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from fedmm.params import Label, check_search, config_specs, parse
from fedmm.registry import Registry, registered_name
from fedmm.strategies.selection.base import SelectionPolicy

P = TypeVar("P", bound=type[SelectionPolicy])

#: Every registered selection policy class, by name.
POLICIES: Registry[type[SelectionPolicy]] = Registry("selection policy")


def register_policy(name: str) -> Callable[[P], P]:
    """Class decorator: register a selection policy class as ``name`` (``@register_policy("divfl")``).

    Parameters
    ----------
    name:
        Its registry name, the value of config key ``selection``; set as the class's ``name``
        (``ValueError`` if another class has it).

    Returns
    -------
    A decorator that registers a subclass of :class:`SelectionPolicy` and returns the class.
    """
    name = registered_name("register_policy", name)

    def register(cls: P) -> P:
        if not (isinstance(cls, type) and issubclass(cls, SelectionPolicy)):
            raise TypeError(f"register_policy({name!r}) expects a subclass of SelectionPolicy, got {cls!r}")
        check_search(cls.Params, f"selection {name!r}")  # a search range outside the valid one fails at import
        POLICIES.add(name, cls)
        cls.name = name
        # a directly built Params names its fields as build_policy does (fedmm.params.Checked)
        cls.Params.label_format = f"parameter '{{}}' of selection {name!r}"
        return cls

    return register


def policy_names() -> list[str]:
    """Registered policy names, sorted."""
    return POLICIES.names()


def policy_class(name: str) -> type[SelectionPolicy]:
    """The class registered as ``name`` (ValueError with a did-you-mean hint otherwise)."""
    return POLICIES.get(name)


def parse_policy_params(name: str, params: Mapping[str, Any] | None, *, label: Label | None = None) -> Any:
    """The ``Params`` of policy ``name`` from config names (kebab-case) and raw values, by
    :func:`fedmm.params.parse`.

    Parameters
    ----------
    name:
        A registered policy name.
    params:
        Parameter name -> raw value (``{"sketch-dim": 128}``); ``None`` for the defaults.
    label:
        Kebab-case name -> how messages name it; default ``"parameter '<name>' of selection '<policy>'"``.
    """
    return parse(policy_class(name).Params, params or {}, component=f"selection {name!r}", label=label)


def build_policy(name: str, params: Mapping[str, Any] | None = None, *, seed: int) -> SelectionPolicy:
    """Build the policy ``name`` with validated ``params`` and its own generator seeded by ``seed``."""
    return policy_class(name)(parse_policy_params(name, params), seed=seed)


def policy_params(name: str) -> list[tuple[str, Any, str]]:
    """``(parameter, default, help)`` of policy ``name``."""
    return [(s.name, s.default, s.help) for s in config_specs(policy_class(name).Params)]
