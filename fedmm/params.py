"""One parameter validator for run config keys, objective and selection parameters, dataset
options, encoder choices and local training settings (no torch, no flwr here).

A parameter is a dataclass field or a keyword argument of a function. Its constraints are declared
next to it in its annotation, as in scikit-learn's ``_param_validation``::

    momentum: Annotated[float, Interval(float, 0, 1, closed="left")] = 0.2
    fusion: Annotated[str, Options("mean", "concat")] = "mean"

and its help text is the first paragraph of its entry in the numpy-style ``Parameters`` section of
the class's (or function's) docstring (:func:`specs`). :func:`check_value` is the one rule: convert
the value to the annotated type (strings from the command line are parsed, an ``int`` is accepted
for a ``float``), refuse NaN and infinity, then test every constraint. :func:`parse` builds a
dataclass from a mapping of config names with it; :class:`Checked` runs it when a dataclass is
built directly. Every error is a ``ValueError`` whose message starts with the parameter's label
(``config key 'lr'``, ``parameter 'delta' of selection 'cmsfed'``, ``TrainConfig.momentum``).

Why one module of this size: the one parameter validator: constraints, search ranges, conversion
and docstring help belong together.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fedmm.registry import did_you_mean

_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})

#: What a label function gets and returns: the parameter's shown name -> ``"config key 'lr'"``.
Label = Callable[[str], str]


# -- constraints -------------------------------------------------------------------------------
class Constraint:
    """A rule a parameter's (converted) value must satisfy."""

    def violation(self, value: Any) -> str | None:
        """``None`` when ``value`` satisfies the rule, else the rest of the message after the label
        (``"must be >= 0, got -1"``)."""
        raise NotImplementedError

    def describe(self) -> str:
        """What the rule allows, for listings (``"[0, 1)"``)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Interval(Constraint):
    """Numbers of ``type`` between ``left`` and ``right`` (``None``: unbounded on that side).

    Parameters
    ----------
    type:
        ``int`` (integers only) or ``float`` (any real number).
    left, right:
        The bounds; ``None`` for no bound.
    closed:
        Which bounds belong to the interval: ``"left"``, ``"right"``, ``"both"`` or ``"neither"``.
    """

    type: type
    left: float | None
    right: float | None
    closed: Literal["left", "right", "both", "neither"] = "both"

    def __post_init__(self) -> None:
        if self.type not in (int, float):
            raise TypeError(f"Interval type must be int or float, got {self.type!r}")
        if self.closed not in ("left", "right", "both", "neither"):
            raise ValueError(f"Interval closed must be 'left', 'right', 'both' or 'neither', got {self.closed!r}")
        if self.left is not None and self.right is not None and self.left > self.right:
            raise ValueError(f"Interval left bound {self.left} is above its right bound {self.right}")

    def violation(self, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int if self.type is int else (int, float)):
            return f"must be {'an integer' if self.type is int else 'a number'} in {self.describe()}, got {value!r}"
        if self.left is not None:
            closed = self.closed in ("left", "both")
            if value < self.left or (not closed and value == self.left):
                return f"must be {'>=' if closed else '>'} {self.left}, got {value!r}"
        if self.right is not None:
            closed = self.closed in ("right", "both")
            if value > self.right or (not closed and value == self.right):
                return f"must be {'<=' if closed else '<'} {self.right}, got {value!r}"
        return None

    def describe(self) -> str:
        # by the declared type: Annotated caches equal constraints, so Interval(float, 0, 1) may be the
        # instance another module built as Interval(float, 0.0, 1.0); both must read the same
        left = (
            "(-inf"
            if self.left is None
            else ("[" if self.closed in ("left", "both") else "(") + str(self.type(self.left))
        )
        right = (
            "inf)"
            if self.right is None
            else str(self.type(self.right)) + ("]" if self.closed in ("right", "both") else ")")
        )
        return f"{left}, {right}"


@dataclass(frozen=True, init=False)
class Options(Constraint):
    """One of the given strings (``Options("natural", "iid", "dirichlet")``)."""

    options: tuple[str, ...]

    def __init__(self, *options: str) -> None:
        object.__setattr__(self, "options", tuple(options))

    def violation(self, value: Any) -> str | None:
        if value in self.options:
            return None
        hint = did_you_mean(str(value), list(self.options))
        hint = f" ({hint[2:]})" if hint != "." else ""
        return f"must be one of {list(self.options)}, got {value!r}{hint}"

    def describe(self) -> str:
        return ", ".join(self.options)


# -- search ranges -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Search:
    """Where a tuner (``fedmm tune``) looks for a parameter's value, declared next to its
    constraints: ``lr: Annotated[float, POSITIVE, Search(1e-4, 0.5, log=True)] = 0.05``. Not a
    constraint: a configured value outside the range is still valid.

    Parameters
    ----------
    low, high:
        The range of a numeric parameter, both ends included; ``None`` with ``choices``.
    log:
        Sample on a log scale (``low`` must then be > 0).
    step:
        The grid step of an integer parameter (default 1); ``None`` for a float: continuous.
    choices:
        The values to try instead of a range (strings, or a few numbers).
    """

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def problem(self, spec: Spec) -> str | None:
        """``None`` when this range fits ``spec`` (its type and every constraint), else what is
        wrong (``"low -1 violates: must be >= 0.0, got -1"``)."""
        if self.choices:
            if self.low is not None or self.high is not None:
                return "give either choices or low/high, not both"
            ends = {f"choice {c!r}": c for c in self.choices}
        else:
            if self.low is None or self.high is None:
                return "needs low and high (or choices)"
            if not self.low < self.high:
                return f"low {self.low} must be below high {self.high}"
            if self.log and self.low <= 0:
                return f"a log range needs low > 0, got {self.low}"
            ends = {f"low {self.low}": self.low, f"high {self.high}": self.high}
        for what, value in ends.items():
            try:
                converted = convert_value(value, spec.annotation)
            except (TypeError, ValueError):
                return f"{what} is not a {type_name(spec.annotation)}"
            if isinstance(converted, float) and not math.isfinite(converted):
                return f"{what} is not finite"
            for constraint in spec.constraints:
                if (why := constraint.violation(converted)) is not None:
                    return f"{what} is outside the valid range: {why}"
        return None

    def describe(self) -> str:
        """The range as ``fedmm config`` lists it: ``log[0.0001, 0.5]``, ``[1, 5]``, ``{a, b}``."""
        if self.choices:
            return "{" + ", ".join(map(str, self.choices)) + "}"
        ends = ", ".join("?" if v is None else f"{v:g}" for v in (self.low, self.high))
        return f"{'log' if self.log else ''}[{ends}]"

    def suggest(self, trial: Any, name: str, annotation: Any) -> Any:
        """A value drawn by an Optuna ``trial`` for parameter ``name`` of type ``annotation``."""
        if self.choices:
            return trial.suggest_categorical(name, list(self.choices))
        if annotation is int:
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(name, float(self.low), float(self.high), log=self.log, step=self.step)


def check_search(target: type, owner: str) -> None:
    """Refuse (``ValueError`` naming ``owner`` and the field) a :class:`Search` range of
    ``target``'s parameters that leaves the parameter's valid range; every registry calls it when
    a ``Params`` class is registered, so a wrong range fails when its module is imported.

    Parameters
    ----------
    target:
        A dataclass (a ``Params``, ``RunConfig``).
    owner:
        Who declares it, for the message (``"objective 'mnl'"``).
    """
    for spec in specs(target):
        if spec.search is not None and (why := spec.search.problem(spec)) is not None:
            raise ValueError(f"search range {spec.search.describe()} of parameter {spec.name!r} of {owner}: {why}")


# -- one parameter -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    """One declared parameter.

    Parameters
    ----------
    name:
        The field or argument name.
    annotation:
        Its type, without the constraints (``float``, ``list[float]``, ``str | None``).
    default:
        Its default (``dataclasses.MISSING`` when it has none; a factory's value otherwise).
    constraints:
        The :class:`Constraint` objects of its ``Annotated`` annotation.
    help:
        The first paragraph of its docstring entry; empty when it has none.
    search:
        Its :class:`Search` range for tuning; ``None`` when it is not tuned.
    """

    name: str
    annotation: Any
    default: Any
    constraints: tuple[Constraint, ...]
    help: str
    search: Search | None = None

    def allowed(self) -> str:
        """The type and constraints as one phrase (``"float in [0, 1)"``)."""
        rules = " ".join(c.describe() for c in self.constraints)
        return f"{type_name(self.annotation)} in {rules}" if rules else type_name(self.annotation)


def specs(target: type | Callable[..., Any]) -> list[Spec]:
    """The declared parameters of a dataclass (its init fields) or a function (its keyword
    arguments), in declaration order, with help from ``target``'s docstring (a class's, else that
    of the nearest base class whose docstring describes the field)."""
    helps: dict[str, str] = {}
    for owner in reversed(getattr(target, "__mro__", (target,))):
        helps.update({k: v for k, v in docstring_params(owner.__doc__ or "").items() if v or k not in helps})
    hints = typing.get_type_hints(target, include_extras=True)
    out = []
    if dataclasses.is_dataclass(target):
        for f in dataclasses.fields(target):
            if not f.init:
                continue
            default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            out.append(_spec(f.name, hints[f.name], default, helps))
    else:
        for p in inspect.signature(target).parameters.values():
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
                default = dataclasses.MISSING if p.default is inspect.Parameter.empty else p.default
                out.append(_spec(p.name, hints.get(p.name, Any), default, helps))
    return out


@functools.cache
def _checked_specs(cls: type) -> tuple[Spec, ...]:
    """:func:`specs` of a :class:`Checked` class, read once per class (every instance is checked
    against them: clients build train settings and model configs for every message)."""
    return tuple(specs(cls))


def config_specs(cls: type) -> list[Spec]:
    """:func:`specs` of dataclass ``cls``, each under its config name (``cls.field_names``, as
    :class:`Checked` declares it; else :func:`config_name`), for listings."""
    names = getattr(cls, "field_names", {})
    return [dataclasses.replace(s, name=names.get(s.name, config_name(s.name))) for s in specs(cls)]


def _spec(name: str, hint: Any, default: Any, helps: Mapping[str, str]) -> Spec:
    annotation, constraints, search = hint, (), None
    if typing.get_origin(hint) is Annotated:
        annotation, *extra = typing.get_args(hint)
        constraints = tuple(c for c in extra if isinstance(c, Constraint))
        search = next((c for c in extra if isinstance(c, Search)), None)
    return Spec(name, annotation, default, constraints, helps.get(name, ""), search)


def check_value(label: str, value: Any, spec: Spec) -> Any:
    """``value`` converted to ``spec``'s type and checked: finite, and within every constraint.

    Parameters
    ----------
    label:
        How messages name the parameter (``"config key 'lr'"``).
    value:
        The raw value: typed (from TOML or code) or a string (from the command line).
    spec:
        The parameter's declaration.

    Raises
    ------
    ValueError
        ``"<label> expects <type>, got ..."``, ``"<label> must be a finite number, got ..."``, or
        the violated constraint's message.
    """
    try:
        converted = convert_value(value, spec.annotation)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{label} expects {type_name(spec.annotation)}, got {value!r} ({type(value).__name__}): {err}"
        ) from None
    items = converted if isinstance(converted, (list, tuple)) else [converted]
    if any(isinstance(v, float) and not math.isfinite(v) for v in items):
        raise ValueError(f"{label} must be a finite number, got {value!r}")
    for constraint in spec.constraints:  # on each item of a list
        for item in items:
            problem = constraint.violation(item)
            if problem is not None:
                raise ValueError(f"{label} {problem}")
    return converted


def config_name(field: str) -> str:
    """The config spelling of parameter ``field``: kebab-case, as Flower's run config spells its
    keys (``n_max`` -> ``n-max``). The one spelling of every config key and namespaced parameter."""
    return field.replace("_", "-")


def parse_values(
    declared: list[Spec],
    given: Mapping[str, Any],
    *,
    component: str,
    noun: str = "parameter",
    aliases: Mapping[str, str] | None = None,
    shown: Callable[[str], str] = str,
    label: Label | None = None,
) -> dict[str, Any]:
    """Field name -> the checked value of every given parameter (:func:`check_value`).

    A parameter has one config name: its field name in kebab-case (:func:`config_name`), or its
    alias. Another spelling of it (the snake_case field name, the field name behind an alias) is
    refused with a message naming the config name.

    Parameters
    ----------
    declared:
        The parameters that exist (:func:`specs`).
    given:
        Config name -> raw value.
    component:
        The owner, for messages (``"objective 'mnl'"``, ``"selection 'cmsfed'"``).
    noun:
        What one parameter is called in messages (``"parameter"``, ``"option"``).
    aliases:
        Config name -> field name, for a field whose kebab-case name cannot be its config name
        (``{"lambda": "lam"}``: ``lambda`` is a Python keyword).
    shown:
        Config name -> the name messages show (``"test-users"`` -> ``"dataset.test-users"``).
    label:
        Shown name -> the label of messages about its value; default ``"<noun> '<name>' of <component>"``.
    """
    label = label or (lambda name: f"{noun} {name!r} of {component}")
    by_name = {s.name: s for s in declared}
    spelled = {field: config_name(field) for field in by_name}  # field -> its one config name
    spelled.update({field: alias for alias, field in (aliases or {}).items()})
    names = {name: field for field, name in spelled.items()}
    out: dict[str, Any] = {}
    for key, raw in given.items():
        field = names.get(key)
        if field is None:
            other = key if key in by_name else names.get(config_name(str(key)))
            if other is not None:
                why = "config keys are kebab-case, as in Flower's run config" if "_" in str(key) else "its one spelling"
                raise ValueError(f"{label(shown(key))} is now {label(shown(spelled[other]))} ({why}); rename it")
            valid = [shown(n) for n in names]
            if not valid:
                raise ValueError(f"{component} takes no {noun}s, got {shown(key)!r}")
            raise ValueError(
                f"unknown {noun} {shown(key)!r} of {component}{did_you_mean(shown(key), valid)} "
                f"Valid {noun}s: {', '.join(valid)}"
            )
        out[field] = check_value(label(shown(key)), raw, by_name[field])
    return out


def parse(cls: type, given: Mapping[str, Any], **how: Any) -> Any:
    """``cls`` (a dataclass) built from config names and raw values by :func:`parse_values` (same
    keyword arguments), then ``validate()`` (the rules between parameters), when it has one."""
    value = cls(**parse_values(specs(cls), given, **how))
    validate = getattr(value, "validate", None)
    if callable(validate) and not isinstance(value, Checked):  # a Checked one validated when built
        validate()
    return value


class Checked:
    """Mixin for a dataclass: ``__post_init__`` checks every field with :func:`check_value` (and
    stores the converted value), so a directly built instance obeys the same rules as a parsed one.

    Messages name a field as :meth:`field_label` does: ``<ClassName>.<field>`` unless the class
    sets ``label_format`` (``"parameter '{}' of objective 'mnl'"``), under its config name
    (``field_names``: field -> alias where it has one, else :func:`config_name`), as the registries
    do for every ``Params``.
    """

    label_format: typing.ClassVar[str] = ""
    field_names: typing.ClassVar[Mapping[str, str]] = {}

    def __post_init__(self) -> None:
        self.check_fields()
        self.validate()

    def check_fields(self) -> None:
        """Check every field by its declaration and store the converted value."""
        for spec in _checked_specs(type(self)):
            value = check_value(self.field_label(spec.name), getattr(self, spec.name), spec)
            object.__setattr__(self, spec.name, value)

    def validate(self) -> None:
        """Rules between parameters (a subclass overrides it; construction calls it once, after
        the fields are checked); none by default."""

    @classmethod
    def default(cls, name: str) -> Any:
        """The declared default of field ``name`` (for rules that compare a value with it; building
        a default instance inside :meth:`validate` would recurse)."""
        return cls.__dataclass_fields__[name].default

    @classmethod
    def field_label(cls, name: str) -> str:
        """How messages name field ``name``."""
        if not cls.label_format:
            return f"{cls.__qualname__}.{name}"
        return cls.label_format.format(cls.field_names.get(name, config_name(name)))


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
    if origin is Annotated:
        return convert_value(value, args[0])
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
    if origin is dict or annotation is dict:
        if not isinstance(value, Mapping):
            raise TypeError("not a table")
        return dict(value)
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
    if typing.get_origin(annotation) is Annotated:
        return type_name(typing.get_args(annotation)[0])
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
        return int(value)
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


def docstring_params(doc: str) -> dict[str, str]:
    """Name -> first paragraph of its description in a numpy-style ``Parameters`` section
    (``a, b:`` entries describe each of the names)."""
    lines = [line.rstrip() for line in inspect.cleandoc(doc).expandtabs().splitlines()]
    out: dict[str, str] = {}
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Parameters") + 2
    except StopIteration:
        return out
    current: list[str] = []
    base_indent: int | None = None
    for line in lines[start:]:
        if not line.strip():
            current = []  # only the first paragraph of a description
            continue
        indent = len(line) - len(line.lstrip())
        if base_indent is None:
            base_indent = indent
        if indent < base_indent or (indent == base_indent and set(line.strip()) <= {"-"}):
            break
        if indent == base_indent:
            names = line.strip().split(":")[0]
            current = [n.strip() for n in names.split(",") if n.strip()]
            out.update({n: "" for n in current})
        else:
            for name in current:
                out[name] = f"{out[name]} {line.strip()}".strip()
    return out


#: Constraints many parameters share.
NON_NEGATIVE = Interval(float, 0.0, None, closed="left")
POSITIVE = Interval(float, 0.0, None, closed="neither")
FRACTION = Interval(float, 0.0, 1.0, closed="both")
NON_NEGATIVE_INT = Interval(int, 0, None, closed="left")
