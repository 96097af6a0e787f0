"""The objective registry: objectives by name, built from plain parameter mappings.

An objective is a subclass of :class:`~fedmm.objectives.base.Objective` with a unique ``name`` and
a nested ``Params`` dataclass (a :class:`fedmm.params.Checked` one, so that a directly built
``Params`` obeys the same rules). Decorating it with ``@register_objective("<name>")`` makes it available
to :func:`build_objective`, which turns a mapping from a TOML file or from
``--set objective.x=...`` into a validated ``Params`` instance with :func:`fedmm.params.parse`:

- keys are the ``Params`` field names in kebab-case (:func:`fedmm.params.config_name`: ``n_max`` is
  ``n-max``), except where the class maps a config name onto a field through ``param_aliases``
  (``{"lambda": "lam"}``: ``lambda`` is a Python keyword); another spelling is refused naming it;
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
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from fedmm.objectives.base import Objective
from fedmm.params import Label, check_search, config_specs, parse, type_name
from fedmm.registry import Registry, registered_name

#: Every registered objective class, by name.
OBJECTIVES: Registry[type[Objective]] = Registry("objective")

ObjectiveType = TypeVar("ObjectiveType", bound=type[Objective])


def register_objective(name: str) -> Callable[[ObjectiveType], ObjectiveType]:
    """Class decorator: register an objective class as ``name`` (``@register_objective("mnl")``).

    Parameters
    ----------
    name:
        Its registry name, the value of config key ``objective``; set as the class's ``name``.

    Returns
    -------
    A decorator that registers a subclass of :class:`Objective` whose ``Params`` dataclass has a
    default for every field, and returns the class.
    """
    name = registered_name("register_objective", name)

    def register(cls: ObjectiveType) -> ObjectiveType:
        if not (isinstance(cls, type) and issubclass(cls, Objective)):
            raise TypeError(f"register_objective({name!r}) expects a subclass of Objective, got {cls!r}")
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
        cls.name = name
        # a directly built Params names its fields as build_objective does (fedmm.params.Checked)
        cls.Params.label_format = f"parameter '{{}}' of objective {name!r}"
        cls.Params.field_names = {field: alias for alias, field in _aliases(cls).items()}  # else kebab-case
        return cls

    return register


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
    return parse(cls.Params, params, component=f"objective {cls.name!r}", aliases=_aliases(cls), label=label)


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


register_objective("ce")(Objective)
