"""The objective registry: objectives by name, built from plain parameter mappings.

An objective is a subclass of :class:`~fedmm.objectives.base.Objective` with a unique ``name`` and
a nested ``Params`` dataclass (a :class:`fedmm.params.Checked` one, so that a directly built
``Params`` obeys the same rules). Decorating it with :func:`register_objective` makes it available
to :func:`build_objective`, which turns a mapping from a TOML file or from
``--set objective.x=...`` into a validated ``Params`` instance with :func:`fedmm.params.parse`:

- keys are the ``Params`` field names, except where the class maps a config name onto a field
  through ``param_aliases`` (``{"lambda": "lam"}``: ``lambda`` is a Python keyword);
- values are converted to the field's annotated type (``bool``, ``int``, ``float``, ``str``,
  ``list[...]``, ``tuple[...]``, ``Literal[...]``, ``X | None``); strings such as ``"0.7"`` or
  ``"true"`` from the command line are parsed, an ``int`` is accepted for a ``float`` field;
- the constraints of a field's ``Annotated`` annotation (:class:`fedmm.params.Interval`,
  :class:`fedmm.params.Options`) are checked, NaN and infinity refused;
- ``Params.validate()``, when defined, holds the rules between parameters (building the ``Params``
  calls it, once).

Every error is a ``ValueError`` that names the objective, the key and the nearest valid name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from fedmm.objectives.base import Objective
from fedmm.params import Label, check_search, config_specs, parse, type_name
from fedmm.registry import Registry

#: Every registered objective class, by name.
OBJECTIVES: Registry[type[Objective]] = Registry("objective")

ObjectiveType = TypeVar("ObjectiveType", bound=type[Objective])


def register_objective(cls: ObjectiveType) -> ObjectiveType:
    """Class decorator: register objective ``cls`` under ``cls.name``.

    Parameters
    ----------
    cls:
        A subclass of :class:`Objective` with a non-empty ``name`` and a ``Params`` dataclass whose
        fields all have defaults.

    Returns
    -------
    The class itself, so that it can be used as ``@register_objective``.
    """
    if not (isinstance(cls, type) and issubclass(cls, Objective)):
        raise TypeError(f"register_objective expects a subclass of Objective, got {cls!r}")
    name = getattr(cls, "name", "")
    if not isinstance(name, str) or not name:
        raise ValueError(f"objective class {cls.__qualname__} needs a non-empty string `name`")
    if not dataclasses.is_dataclass(cls.Params):
        raise TypeError(f"objective {name!r}: `Params` must be a dataclass")
    fields = {f.name for f in dataclasses.fields(cls.Params)}
    required = [
        f.name
        for f in dataclasses.fields(cls.Params)
        if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if required:
        raise ValueError(f"objective {name!r}: Params fields {required} need defaults")
    bad_aliases = {a: f for a, f in _aliases(cls).items() if f not in fields}
    if bad_aliases:
        raise ValueError(
            f"objective {name!r}: param_aliases {bad_aliases} point at no Params field; fields are {sorted(fields)}"
        )
    check_search(cls.Params, f"objective {name!r}")  # a search range outside the valid one fails at import
    OBJECTIVES.add(name, cls)
    # a directly built Params names its fields as build_objective does (fedmm.params.Checked)
    cls.Params.label_format = f"parameter '{{}}' of objective {name!r}"
    cls.Params.field_names = {field: alias for alias, field in _aliases(cls).items()}
    return cls


def objective_names() -> list[str]:
    """Names of all registered objectives, sorted."""
    return OBJECTIVES.names()


def objective_class(name: str) -> type[Objective]:
    """The class registered as ``name``; unknown names raise ``ValueError`` with a suggestion."""
    return OBJECTIVES.get(name)


def build_objective(name: str, params: Mapping[str, Any] | None = None) -> Objective:
    """A fresh instance of objective ``name`` with validated parameters.

    Parameters
    ----------
    name:
        Registry name (``"ce"``, ``"uniform"``, ``"mnl"``, ...).
    params:
        Config name -> value; missing keys take the ``Params`` defaults. Values may be strings as
        written on a command line (``"0.7"``, ``"true"``).

    Raises
    ------
    ValueError
        Unknown objective, unknown parameter, a value of the wrong type, or a value that a
        constraint or ``Params.validate`` rejects.
    """
    cls = objective_class(name)
    return cls(parse_params(cls, params or {}))


def parse_params(cls: type[Objective], params: Mapping[str, Any], *, label: Label | None = None) -> Any:
    """``cls.Params`` built from config names and raw values by :func:`fedmm.params.parse`.

    Parameters
    ----------
    cls:
        A registered objective class.
    params:
        Config name -> raw value.
    label:
        Config name -> how messages name it; default ``"parameter '<name>' of objective '<objective>'"``.
    """
    to_config = {field: alias for alias, field in _aliases(cls).items()}
    return parse(
        cls.Params,
        params,
        component=f"objective {cls.name!r}",
        aliases=_aliases(cls),
        shown=lambda key: to_config.get(key, key),
        label=label,
    )


def describe_objective(name: str) -> dict[str, Any]:
    """What ``fedmm`` can say about objective ``name``, for docs and the CLI.

    Returns
    -------
    ``{"name", "summary", "needs_heads", "params"}`` where ``params`` maps each config name to
    ``{"type": str, "default": value, "help": str}`` (``help`` comes from the ``Params``
    docstring's numpy-style ``Parameters`` section, empty when it has none).
    """
    cls = objective_class(name)
    described = {
        s.name: {"type": type_name(s.annotation), "default": s.default, "help": s.help}
        for s in config_specs(cls.Params)
    }
    doc = (cls.__doc__ or "").strip()
    return {
        "name": cls.name,
        "summary": doc.splitlines()[0] if doc else "",
        "needs_heads": bool(cls.needs_heads),
        "params": described,
    }


def _aliases(cls: type[Objective]) -> dict[str, str]:
    """Config name -> ``Params`` field name, from the optional ``param_aliases`` class attribute."""
    return dict(getattr(cls, "param_aliases", {}) or {})


register_objective(Objective)
