"""``fedmm config``'s listing: every parameter a run config takes (:func:`parameter_rows`), as
sections, and the configuration reference page (``docs/configuration.md``) generated from the same
declarations (``fedmm config --markdown``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import tomli_w

from fedmm.config import param_classes, plain_specs
from fedmm.params import Spec, config_name, config_specs
from fedmm.registry import did_you_mean

#: The command that writes the reference page; the page says it, and tests/test_config_doc.py
#: fails when the page in the repository is not its output.
REGENERATE = "fedmm config --markdown > docs/configuration.md"

NAMESPACE_TITLES = {
    "run": "Run keys",
    "strategy": "`strategy.<param>`: parameters of the strategy",
    "objective": "`objective.<param>`: parameters of the local objective",
    "selection": "`selection.<param>`: parameters of the selection policy",
    "dataset": "`dataset.<option>`: options of the dataset loader, and its default encoders",
    "encoder": "`encoder.<modality>`: the encoder of a modality",
}

INTRO = f"""\
# Configuration reference

<!-- Generated from fedmm's declarations by `{REGENERATE}`; do not edit by hand
     (tests/test_config_doc.py fails when this page is stale). -->

A run is configured by kebab-case keys: a TOML file (`fedmm simulate --config FILE`), then
`--set key=value` overrides (`flwr run --run-config "key=value ..."` through Flower). Parameters of
the strategy, the objective, the selection policy, the dataset loader and per-modality encoders
live in namespaces: `strategy.<param>`, `objective.<param>`, `selection.<param>`,
`dataset.<option>`, `encoder.<modality>` (`[objective]` with `name = "mnl"` in TOML is the same as
`objective = "mnl"`; so is `[dataset]` with `name`, the way to give a dataset and its options in one
file; through `flwr run` they travel in the declared key `overrides`:
`--run-config "overrides='objective.lambda2=0.5'"`). Namespaced parameters are kebab-case too
(the field `n_max` of `boost` is `objective.n-max`), as in Flower's run config; a key spelled the
old snake_case way is refused with a message that names its kebab-case spelling.

Every key and every namespaced parameter is declared once, with its type and its range or choices
in its annotation (`Annotated[float, Interval(float, 0, 1, closed="left")]`, `Options(...)`) and its
meaning in its docstring, and one validator (`fedmm.params`) checks it when the config is loaded:
an unknown key, a wrong type, a value out of range or a number that is not finite (`nan`, `inf`,
also in the namespaces) is an error that names the key and what was expected, before any result
file is written and before Ray starts; so is a `--config` that is missing, a directory, not UTF-8
or not valid TOML, and an `--out` that is, or lies below, a regular file. `fedmm config` prints the
same list in a terminal (`fedmm config objective mnl`, `fedmm config dataset hapt`: one
component). This page lists the built-in components; a plugin's (`plugins`, see
[extending.md](extending.md)) appear in `fedmm config` once it is imported.
"""


def config_keys() -> list[tuple[str, Any, str]]:
    """``(key, default, help)`` for every plain key, in declaration order (for README and CLI)."""
    return [(config_name(s.name), s.default, s.help) for s in plain_specs()]


@dataclass(frozen=True)
class ParamRow:
    """One parameter as ``fedmm config`` lists it.

    Parameters
    ----------
    key:
        The config key (``lr``, ``objective.lambda``, ``dataset.test-users``, ``encoder.<modality>``).
    component:
        Whose parameter it is: ``""`` for a plain run key, else ``"<namespace> <name>"``
        (``"objective mnl"``, ``"dataset hapt"``) or ``"encoder"``.
    allowed:
        Its type and constraints (:meth:`fedmm.params.Spec.allowed`, ``"float in [0.0, 1.0)"``).
    default:
        Its default value.
    help:
        What it means (from the declaring docstring).
    search:
        Where ``fedmm tune`` looks for its value (:meth:`fedmm.params.Search.describe`); empty
        when it is not tuned.
    """

    key: str
    component: str
    allowed: str
    default: Any
    help: str
    search: str = ""


def parameter_rows(namespace: str | None = None, name: str | None = None) -> list[ParamRow]:
    """Every parameter a run config takes, with its constraints, default and meaning: the plain
    keys (declaration order), then each registered component's (:func:`param_classes`), every
    dataset's ``dataset.*`` options and default encoders, and the ``encoder.<modality>`` choices.

    Parameters
    ----------
    namespace:
        Only the rows of this namespace (``"objective"``, ``"dataset"``, ...; ``"run"`` for the
        plain keys); ``None`` for all.
    name:
        With ``namespace``: only the rows of this component (``"mnl"``); an unknown name is a
        ``ValueError`` naming the registered ones.
    """
    from fedmm.data.registry import DATASETS
    from fedmm.models.encoders import ENCODERS

    components: dict[str, dict[str, list[ParamRow]]] = {
        "run": {
            "": [
                ParamRow(config_name(s.name), "", s.allowed(), s.default, s.help, _search_text(s))
                for s in plain_specs()
            ]
        }
    }
    for ns, classes in param_classes().items():
        components[ns] = {
            n: [
                ParamRow(f"{ns}.{s.name}", f"{ns} {n}", s.allowed(), s.default, s.help, _search_text(s))
                for s in config_specs(cls)
            ]
            for n, cls in classes.items()
        }
    encoder = f"one of {', '.join(ENCODERS.names())}"
    components["dataset"] = {
        n: [
            *(
                ParamRow(f"dataset.{config_name(s.name)}", f"dataset {n}", s.allowed(), s.default, s.help)
                for s in entry.options()
            ),
            ParamRow(
                "encoder.<modality>",
                f"dataset {n}",
                encoder,
                dict(entry.encoders),
                "default encoder of a modality, by its kind (unless encoder.<modality> names one)",
            ),
        ]
        for n, entry in DATASETS.items()
    }
    components["encoder"] = {
        "": [
            ParamRow(
                "encoder.<modality>",
                "encoder",
                encoder,
                "",
                "encoder of a modality (default: the dataset's, see its rows)",
            )
        ]
    }
    from fedmm.devices import DeviceParams

    components["devices"] = {
        "": [
            ParamRow(f"devices.{config_name(s.name)}", "devices model", s.allowed(), s.default, s.help)
            for s in config_specs(DeviceParams)
        ]
    }
    if namespace is None:
        return [row for by_name in components.values() for rows in by_name.values() for row in rows]
    if namespace not in components:
        raise ValueError(
            f"unknown namespace {namespace!r}{did_you_mean(namespace, list(components))} Valid: {', '.join(components)}"
        )
    if name is None:
        return [row for rows in components[namespace].values() for row in rows]
    if name not in components[namespace]:
        raise ValueError(
            f"unknown {namespace} {name!r}{did_you_mean(name, list(components[namespace]))} "
            f"Valid: {', '.join(components[namespace])}"
        )
    return components[namespace][name]


def _search_text(spec: Spec) -> str:
    return f"search {spec.search.describe()}" if spec.search is not None else ""


def config_sections(namespace: str | None = None, name: str | None = None) -> list[tuple[str, list[ParamRow]]]:
    """``fedmm config``'s rows grouped by component, in its order: the plain keys (component ``""``),
    then the strategies', objectives' and selection policies' parameters, the datasets' options and
    the encoder choices. A registered component without parameters (``selection random``,
    ``strategy fedcmi``) is a section without rows, so that a listing can say so.

    Parameters
    ----------
    namespace:
        Only this namespace (``"run"``, ``"objective"``, ...); ``None`` for all.
    name:
        With ``namespace``: only this component; an unknown name is a ``ValueError`` naming the
        registered ones (:func:`parameter_rows`).
    """
    rows = parameter_rows(namespace, name)
    sections: dict[str, list[ParamRow]] = {}
    if namespace in (None, "run"):
        sections[""] = []
    classes = param_classes()
    for ns in [namespace] if namespace else classes:
        for n in classes.get(ns, {}):
            if name in (None, n):
                sections[f"{ns} {n}"] = []
    for row in rows:
        sections.setdefault(row.component, []).append(row)
    return [(component, found) for component, found in sections.items() if found or component]


def plain_listing(namespace: str | None = None, name: str | None = None) -> list[str]:
    """The lines ``fedmm config`` prints: one per parameter (key, default, constraint, meaning) under
    a ``[component]`` title; ``(no parameters)`` for a component without any."""
    lines: list[str] = []
    for component, rows in config_sections(namespace, name):
        if component:
            lines += ["", f"[{component}]"]
        if not rows:
            lines.append("(no parameters)")
        width = max([22, *(len(r.key) for r in rows)])  # a section's keys line up, however long
        lines += [
            f"{r.key:{width}s} {r.default!r:14s} {r.allowed:24s} {r.help}" + (f" ({r.search})" if r.search else "")
            for r in rows
        ]
    return lines


def configuration_markdown() -> str:
    """The configuration reference page: :data:`INTRO`, then a table per namespace and component
    (key, default, allowed values, meaning), from the same declarations as ``fedmm config``."""
    parts = [INTRO]
    current_ns = None
    for component, rows in config_sections():
        ns, _, name = component.partition(" ") if component else ("run", "", "")
        if ns != current_ns:
            current_ns = ns
            parts.append(f"## {NAMESPACE_TITLES.get(ns, ns)}\n")
        if name:
            parts.append(f"### {name}\n")
        if not rows:
            parts.append("(no parameters)\n")
            continue
        lines = ["| key | default | allowed | meaning | `fedmm tune` searches |", "|---|---|---|---|---|"]
        lines += [
            f"| `{r.key}` | {_default(r.default)} | {_cell(r.allowed)} | {_cell(r.help)} | "
            f"{_cell(r.search.removeprefix('search '))} |"
            for r in rows
        ]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def _default(value: Any) -> str:
    """A default as TOML writes it (``"hapt"``, ``0.05``, ``true``, ``[]``); a mapping as ``k: v`` pairs."""
    if value == "" and not isinstance(value, str):
        return ""
    if isinstance(value, dict):
        return _cell(", ".join(f"{k}: {v}" for k, v in value.items())) if value else ""
    if isinstance(value, tuple):
        value = list(value)
    try:
        return "`" + tomli_w.dumps({"v": value}).strip().removeprefix("v = ") + "`"
    except (TypeError, ValueError):
        return _cell(str(value))


def _cell(text: Any) -> str:
    """``text`` fit for one Markdown table cell (one line, ``|`` escaped)."""
    return " ".join(str(text).split()).replace("|", "\\|")
