"""The objective registry: objectives by name, built from plain parameter mappings.

An objective is a subclass of :class:`~fedmm.objectives.base.Objective` with a unique ``name`` and
a nested ``Params`` dataclass. Decorating it with :func:`register_objective` makes it available to
:func:`build_objective`, which turns a mapping from a TOML file or from ``--set objective.x=...``
into a validated ``Params`` instance:

- keys are the ``Params`` field names, except where the class maps a config name onto a field
  through ``param_aliases`` (``{"lambda": "lam"}``: ``lambda`` is a Python keyword);
- values are converted to the field's annotated type (``bool``, ``int``, ``float``, ``str``,
  ``list[...]``, ``tuple[...]``, ``Literal[...]``, ``X | None``); strings such as ``"0.7"`` or
  ``"true"`` from the command line are parsed, an ``int`` is accepted for a ``float`` field;
- ``Params.validate()``, when defined, is called and may raise ``ValueError`` for values out of
  range.

Every error is a ``ValueError`` that names the objective, the key and the nearest valid name.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from fedmm.objectives.base import Objective

_OBJECTIVES: dict[str, type[Objective]] = {}

ObjectiveType = TypeVar("ObjectiveType", bound=type[Objective])

_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


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
        raise ValueError(f"objective {name!r}: param_aliases {bad_aliases} point at no Params field; fields are {sorted(fields)}")
    previous = _OBJECTIVES.get(name)
    # Re-registering the same class (module reload) is fine; a second class under one name is not.
    if previous is not None and _qualified(previous) != _qualified(cls):
        raise ValueError(f"objective name {name!r} is already registered by {_qualified(previous)}")
    _OBJECTIVES[name] = cls
    return cls


def objective_names() -> list[str]:
    """Names of all registered objectives, sorted."""
    return sorted(_OBJECTIVES)


def objective_class(name: str) -> type[Objective]:
    """The class registered as ``name``; unknown names raise ``ValueError`` with a suggestion."""
    try:
        return _OBJECTIVES[name]
    except KeyError:
        raise ValueError(
            f"unknown objective {name!r}{_did_you_mean(name, objective_names())} "
            f"Valid objectives: {', '.join(objective_names())}"
        ) from None


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
        Unknown objective, unknown parameter, a value of the wrong type, or a value that
        ``Params.validate`` rejects.
    """
    cls = objective_class(name)
    return cls(parse_params(cls, params or {}))


def parse_params(cls: type[Objective], params: Mapping[str, Any]) -> Any:
    """``cls.Params`` built from config names and raw values, converted and validated."""
    name = cls.name
    aliases = _aliases(cls)
    to_config = {field: alias for alias, field in aliases.items()}
    hints = typing.get_type_hints(cls.Params)
    fields = {f.name: f for f in dataclasses.fields(cls.Params) if f.init}
    valid = [to_config.get(f, f) for f in fields]
    kwargs: dict[str, Any] = {}
    for key, raw in params.items():
        field = aliases.get(key, key)
        if field not in fields:
            if not valid:
                raise ValueError(f"objective {name!r} takes no parameters, got {key!r}")
            raise ValueError(
                f"objective {name!r} has no parameter {key!r}{_did_you_mean(key, valid)} "
                f"Valid parameters: {', '.join(valid)}"
            )
        if field in kwargs:
            raise ValueError(f"objective {name!r}: parameter {to_config.get(field, field)!r} given twice (as {key!r})")
        try:
            kwargs[field] = convert_value(raw, hints[field])
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"objective {name!r}: parameter {key!r} expects {type_name(hints[field])}, "
                f"got {raw!r} ({type(raw).__name__}): {err}"
            ) from None
    value = cls.Params(**kwargs)
    validate = getattr(value, "validate", None)
    if callable(validate):
        validate()
    return value


def describe_objective(name: str) -> dict[str, Any]:
    """What ``fedmm`` can say about objective ``name``, for docs and the CLI.

    Returns
    -------
    ``{"name", "summary", "needs_heads", "params"}`` where ``params`` maps each config name to
    ``{"type": str, "default": value, "help": str}`` (``help`` comes from the ``Params``
    docstring's numpy-style ``Parameters`` section, empty when it has none).
    """
    cls = objective_class(name)
    to_config = {field: alias for alias, field in _aliases(cls).items()}
    hints = typing.get_type_hints(cls.Params)
    helps = _docstring_params(cls.Params.__doc__ or "")
    described: dict[str, dict[str, Any]] = {}
    for f in dataclasses.fields(cls.Params):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        described[to_config.get(f.name, f.name)] = {
            "type": type_name(hints[f.name]),
            "default": default,
            "help": helps.get(f.name, ""),
        }
    doc = (cls.__doc__ or "").strip()
    return {
        "name": cls.name,
        "summary": doc.splitlines()[0] if doc else "",
        "needs_heads": bool(cls.needs_heads),
        "params": described,
    }


# -- value conversion --------------------------------------------------------------------------
def convert_value(value: Any, annotation: Any) -> Any:
    """``value`` as an instance of the type ``annotation``; raises ``TypeError``/``ValueError``.

    Parameters
    ----------
    value:
        The raw value: already typed (from TOML) or a string (from the command line).
    annotation:
        A resolved type annotation (``float``, ``list[int]``, ``str | None``, ``Literal["a", "b"]``).
    """
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return convert_value(value, arg)
            except (TypeError, ValueError) as err:
                errors.append(str(err))
        raise ValueError("; ".join(errors) or "no matching type")
    if origin is Literal:
        for choice in args:
            try:
                if convert_value(value, type(choice)) == choice:
                    return choice
            except (TypeError, ValueError):
                continue
        raise ValueError(f"must be one of {list(args)}")
    if origin in (list, tuple):
        items = _as_sequence(value)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert_value(v, args[0]) for v in items)
        if origin is tuple and args:
            if len(items) != len(args):
                raise ValueError(f"needs {len(args)} items, got {len(items)}")
            return tuple(convert_value(v, a) for v, a in zip(items, args, strict=True))
        converted = [convert_value(v, args[0]) for v in items] if args else list(items)
        return converted if origin is list else tuple(converted)
    if annotation is bool:
        return _to_bool(value)
    if annotation is int:
        return _to_int(value)
    if annotation is float:
        return _to_float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise TypeError("not a string")
        return value
    if isinstance(annotation, type) and isinstance(value, annotation):
        return value
    raise TypeError(f"cannot convert to {type_name(annotation)}")


def type_name(annotation: Any) -> str:
    """A short readable name of a type annotation: ``float``, ``list[float]``, ``int | None``."""
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError("not a boolean (use true/false)")
    raise TypeError("not a boolean")


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError("a boolean is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return int(value.strip())
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise TypeError("not an integer")


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError("a boolean is not a number")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        return float(value.strip())
    raise TypeError("not a number")


def _as_sequence(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        text = value.strip().strip("[]()")
        return [part.strip() for part in text.split(",") if part.strip()]
    raise TypeError("not a list")


# -- helpers -----------------------------------------------------------------------------------
def _aliases(cls: type[Objective]) -> dict[str, str]:
    """Config name -> ``Params`` field name, from the optional ``param_aliases`` class attribute."""
    return dict(getattr(cls, "param_aliases", {}) or {})


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _did_you_mean(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else "."


def _docstring_params(doc: str) -> dict[str, str]:
    """Field name -> first paragraph of its description in a numpy-style ``Parameters`` section."""
    lines = [line.rstrip() for line in doc.expandtabs().splitlines()]
    out: dict[str, str] = {}
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Parameters") + 2
    except StopIteration:
        return out
    current: str | None = None
    base_indent: int | None = None
    for line in lines[start:]:
        if not line.strip():
            current = None  # only the first paragraph of a description
            continue
        indent = len(line) - len(line.lstrip())
        if base_indent is None:
            base_indent = indent
        if indent < base_indent:
            break
        if indent == base_indent:
            current = line.strip().split(":")[0].strip()
            out[current] = ""
        elif current is not None:
            out[current] = f"{out[current]} {line.strip()}".strip()
    return out


register_objective(Objective)
