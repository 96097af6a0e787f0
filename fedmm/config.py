"""Typed run configuration: defaults, TOML files, ``key=value`` overrides and validation.

Keys are kebab-case as in Flower's run config. Five namespaces pass parameters through to the
component they configure and are validated by it: ``strategy.<param>``, ``objective.<param>``,
``selection.<param>``, ``dataset.<option>`` and ``encoder.<modality>``.
"""

from __future__ import annotations

import difflib
import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

from fedmm.strategies.recipes import STRATEGIES

NAMESPACES = ("strategy", "objective", "selection", "dataset", "encoder")
#: Keys that moved, and where to: an old config that sets one gets an error naming the new key.
MOVED_KEYS = {"proximal-mu": "strategy.mu (with strategy=fedprox)"}


def _key(name: str, default: Any, help: str, *, choices: tuple[str, ...] = (), low: float | None = None,
         high: float | None = None, low_open: bool = False) -> Any:
    """A config field: ``name`` is its kebab-case key; ``low``/``high`` bound numbers (inclusive
    unless ``low_open``)."""
    meta = {"key": name, "help": help, "choices": choices, "low": low, "high": high, "low_open": low_open}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class RunConfig:
    """Everything one federated run needs. Build it with :func:`load_config` or :meth:`from_mapping`."""

    # data and scenario
    dataset: str = _key("dataset", "hapt", "registry name of the dataset (see `fedmm datasets`)")
    data_dir: str = _key("data-dir", "", "directory of user-owned data (CREMA-D); empty for embedded data")
    seed: int = _key("seed", 0, "one seed for partition, allocation, selection and initialisation", low=0)
    partition: str = _key("partition", "natural", "how train data is split among clients",
                          choices=("natural", "iid", "dirichlet"))
    num_clients: int = _key("num-clients", 0, "number of clients; 0 = one per natural group (natural only)", low=0)
    dirichlet_alpha: float = _key("dirichlet-alpha", 3.0, "Dirichlet concentration of the label skew",
                                  low=0.0, low_open=True)
    client_size_cap: float = _key("client-size-cap", 1.1, "Dirichlet: stop giving a client data above "
                                  "cap * N / num-clients samples", low=1.0)
    allocation: str = _key("allocation", "multi-ratio", "which modalities each client holds",
                           choices=("all", "multi-ratio", "fractions", "missing-rate"))
    multi_ratio: float = _key("multi-ratio", 0.5, "fraction of multimodal clients (allocation=multi-ratio)",
                              low=0.0, high=1.0)
    modality_fractions: str = _key("modality-fractions", "", "allocation=fractions: e.g. "
                                   "'acc=0.3,gyro=0.3,acc+gyro=0.4'")
    missing_rate: float = _key("missing-rate", 0.0, "allocation=missing-rate: chance a client lacks a modality",
                               low=0.0, high=1.0)
    # federation
    num_server_rounds: int = _key("num-server-rounds", 20, "number of federated rounds", low=1)
    clients_per_round: int = _key("clients-per-round", 10, "budget of clients trained per round "
                                  "(ignored by selection=all)", low=1)
    strategy: str = _key("strategy", "fedavg", "server strategy (a registered recipe: fedavg, fedprox, fedcmi, "
                         "cmsfed); its parameters are strategy.<param>, e.g. strategy.mu for fedprox")
    selection: str = _key("selection", "auto", "client/modality selection policy; auto = the strategy's own "
                          "(cmsfed for strategy=cmsfed, else all)")
    fraction_evaluate: float = _key("fraction-evaluate", 0.0, "fraction of clients that evaluate the global "
                                    "model on their own data each round (central evaluation always runs)",
                                    low=0.0, high=1.0)
    min_available_nodes: int = _key("min-available-nodes", 0, "nodes to wait for before round 1; "
                                    "0 = all clients", low=0)
    round_timeout: float = _key("round-timeout", 600.0, "seconds to wait for replies in a round, and for "
                                "min-available-nodes nodes to connect before round 1",
                                low=0.0, low_open=True)
    # local training
    objective: str = _key("objective", "auto", "local training objective (docs/objectives.md); auto = the "
                          "strategy's own (fedcmi, cmsfed), else ce")
    local_epochs: int = _key("local-epochs", 2, "local epochs per round", low=1)
    batch_size: int = _key("batch-size", 32, "local mini-batch size", low=2)
    lr: float = _key("lr", 0.05, "local SGD learning rate", low=0.0, low_open=True)
    lr_min: float = _key("lr-min", 0.0, "learning rate of the last round when lr-decay-start > 0 (must then be "
                         "in (0, lr])", low=0.0)
    lr_decay_start: int = _key("lr-decay-start", 0, "0 = constant lr; else lr until this round, then "
                               "lr - (lr - lr-min) * round / num-server-rounds (FedCMI/CMSFed schedule)", low=0)
    momentum: float = _key("momentum", 0.9, "local SGD momentum", low=0.0, high=1.0)
    weight_decay: float = _key("weight-decay", 1e-4, "local SGD weight decay", low=0.0)
    precision: str = _key("precision", "fp32", "precision of local training steps: fp32, or autocast bf16 "
                          "(Ampere+ GPUs, CPU) or fp16 (with loss scaling); evaluation stays fp32",
                          choices=("fp32", "bf16", "fp16"))
    # model
    embed_dim: int = _key("embed-dim", 64, "feature width of every encoder", low=1)
    # resources
    device: str = _key("device", "auto", "auto (CUDA when present), cpu, cuda or cuda:N")
    client_num_cpus: float = _key("client-num-cpus", 1.0, "CPUs per simulated client (Ray actor)",
                                  low=0.0, low_open=True)
    client_num_gpus: float = _key("client-num-gpus", -1.0, "GPU fraction per simulated client; "
                                  "-1 = auto (0.5 when CUDA is present, else 0)", low=-1.0, high=1.0)
    # output
    out_dir: str = _key("out-dir", "", "results directory (fedmm simulate --out sets it)")
    # namespaced parameters, validated by their component
    strategy_params: dict[str, Any] = field(default_factory=dict, metadata={"key": "strategy.*"})
    objective_params: dict[str, Any] = field(default_factory=dict, metadata={"key": "objective.*"})
    selection_params: dict[str, Any] = field(default_factory=dict, metadata={"key": "selection.*"})
    dataset_options: dict[str, Any] = field(default_factory=dict, metadata={"key": "dataset.*"})
    encoders: dict[str, str] = field(default_factory=dict, metadata={"key": "encoder.*"})

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RunConfig:
        """Validate flat ``values`` (kebab-case keys, dotted for namespaces) over the defaults."""
        plain = {f.metadata["key"]: f for f in fields(cls) if not f.metadata["key"].endswith(".*")}
        kwargs: dict[str, Any] = {}
        namespaced: dict[str, dict[str, Any]] = {ns: {} for ns in NAMESPACES}
        for key, value in values.items():
            head, dot, rest = key.partition(".")
            if dot and head in NAMESPACES:
                if head in ("strategy", "objective", "selection") and rest == "name":
                    key = head  # [objective] name = "mnl" is the same as objective = "mnl"
                else:
                    namespaced[head][rest] = value
                    continue
            if key in MOVED_KEYS:
                raise ValueError(f"config key '{key}' is now '{MOVED_KEYS[key]}'; rename it in your config")
            if key not in plain:
                raise ValueError(_unknown_key_message(key, [*plain, *(f"{ns}.<name>" for ns in NAMESPACES)]))
            f = plain[key]
            kwargs[f.name] = _coerce(key, value, f.default)
        strategy = kwargs.get("strategy", cls.strategy)
        if strategy not in STRATEGIES:
            raise ValueError(_choice_message("strategy", strategy, STRATEGIES.names()))
        kwargs["objective"] = resolve_objective(strategy, kwargs.get("objective", cls.objective))
        kwargs["selection"] = resolve_selection(strategy, kwargs.get("selection", cls.selection))
        config = cls(
            **kwargs,
            strategy_params=namespaced["strategy"],
            objective_params=namespaced["objective"],
            selection_params=namespaced["selection"],
            dataset_options=namespaced["dataset"],
            encoders={m: str(v) for m, v in namespaced["encoder"].items()},
        )
        config.validate()
        return config

    def validate(self) -> None:
        """Check choices, finiteness and ranges of the plain keys and the combinations between them;
        numbers in the ``objective.*``/``selection.*``/``dataset.*`` namespaces must be finite too."""
        for f in fields(self):
            meta = f.metadata
            value = getattr(self, f.name)
            if meta["key"].endswith(".*"):
                _check_finite_params(meta["key"][:-2], value)
                continue
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"config key '{meta['key']}' must be a finite number, got {value!r}")
            if meta.get("choices") and value not in meta["choices"]:
                raise ValueError(_choice_message(meta["key"], value, meta["choices"]))
            low, high = meta.get("low"), meta.get("high")
            if low is not None and (value < low or (meta["low_open"] and value == low)):
                op = ">" if meta["low_open"] else ">="
                raise ValueError(f"config key '{meta['key']}' must be {op} {low}, got {value!r}")
            if high is not None and value > high:
                raise ValueError(f"config key '{meta['key']}' must be <= {high}, got {value!r}")
        if self.partition != "natural" and self.num_clients == 0:
            raise ValueError(
                f"config key 'num-clients' must be > 0 with partition='{self.partition}' "
                "(0 means one client per natural group and only works with partition='natural')"
            )
        if self.allocation == "fractions" and not self.modality_fractions:
            raise ValueError("allocation='fractions' needs 'modality-fractions', e.g. 'acc=0.3,gyro=0.3,acc+gyro=0.4'")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(_choice_message("device", self.device, ("auto", "cpu", "cuda", "cuda:N")))
        if self.lr_decay_start > 0:
            if self.lr_decay_start >= self.num_server_rounds:
                raise ValueError(
                    f"config key 'lr-decay-start' must be < num-server-rounds ({self.num_server_rounds}) or 0 "
                    f"(constant lr), got {self.lr_decay_start}: the decay would never start"
                )
            if not 0.0 < self.lr_min <= self.lr:
                raise ValueError(
                    f"config key 'lr-min' must be in (0, lr] = (0, {self.lr}] when lr-decay-start > 0 (the learning "
                    f"rate decays from lr to lr-min in the last round), got {self.lr_min}"
                )

    def __hash__(self) -> int:  # the dict fields make the generated hash fail; the TOML text is canonical
        return hash(self.to_toml())

    # -- output ----------------------------------------------------------------------------------
    def to_flat(self) -> dict[str, Any]:
        """Flat kebab-case mapping that :meth:`from_mapping` turns back into this config."""
        out: dict[str, Any] = {}
        for f in fields(self):
            key = f.metadata["key"]
            value = getattr(self, f.name)
            if key.endswith(".*"):
                out.update({f"{key[:-2]}.{k}": v for k, v in sorted(value.items())})
            else:
                out[key] = value
        return out

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_flat())

    def replace(self, **overrides: Any) -> RunConfig:
        """A copy with kebab-case ``overrides`` applied and validated."""
        return RunConfig.from_mapping({**self.to_flat(), **overrides})


def resolve_objective(strategy: str, objective: str) -> str:
    """The local objective a run trains with: ``auto`` is the strategy recipe's own objective (``ce``
    for fedavg/fedprox); a strategy with its own objective accepts only that one, and that objective
    needs its strategy (its server half: teacher model, global prototypes)."""
    own = STRATEGIES.get(strategy).objective
    if objective == "auto":
        return own or "ce"
    if own is not None and objective != own:
        raise ValueError(
            f"config key 'objective' must be 'auto' or {own!r} with strategy={strategy!r} (the strategy trains "
            f"clients with its own local loss), got {objective!r}; use strategy='fedavg' to train with {objective!r}"
        )
    owner = next((s for s, r in STRATEGIES.items() if r.objective == objective), None)
    if owner is not None and owner != strategy:
        raise ValueError(f"objective {objective!r} is the client side of strategy {owner!r}; set strategy={owner!r}")
    return objective


def resolve_selection(strategy: str, selection: str) -> str:
    """``auto`` is the strategy recipe's own selection policy (``cmsfed`` for CMSFed, else ``all``)."""
    return STRATEGIES.get(strategy).selection if selection == "auto" else selection


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> RunConfig:
    """Defaults, then the TOML file at ``path`` (nested tables become dotted keys), then
    ``key=value`` overrides (values parsed as TOML literals, bare words as strings)."""
    values: dict[str, Any] = {}
    if path is not None:
        values.update(flatten(read_toml(path)))
    values.update(parse_overrides(overrides))
    return RunConfig.from_mapping(values)


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
        raise ValueError(f"config file {name!r} cannot be read ({err.strerror}); check its path and permissions") \
            from None
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


def _coerce(key: str, value: Any, default: Any) -> Any:
    expected = type(default)
    if expected is bool:
        if isinstance(value, bool):
            return value
    elif expected is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif expected is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif expected is str:
        if isinstance(value, str):
            return value
    raise ValueError(f"config key '{key}' expects {expected.__name__}, got {value!r} ({type(value).__name__})")


def _check_finite_params(namespace: str, params: Mapping[str, Any]) -> None:
    """Refuse NaN and infinity among the numbers of a namespace's parameters (also inside lists).

    Parameters
    ----------
    namespace:
        ``objective``, ``selection``, ``dataset`` or ``encoder``: the prefix of the keys in messages.
    params:
        The namespace's parameters as given (``{"lambda": 0.7}`` for ``objective.lambda = 0.7``).
    """
    for name, value in params.items():
        items = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in items):
            raise ValueError(f"config key '{namespace}.{name}' must be a finite number, got {value!r}")


def _unknown_key_message(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown config key '{key}'{hint} Valid keys: {', '.join(sorted(valid))}"


def _choice_message(key: str, value: Any, choices: Iterable[str]) -> str:
    choices = list(choices)
    close = difflib.get_close_matches(str(value), choices, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"config key '{key}' must be one of {choices}, got {value!r}{hint}"


def config_keys() -> list[tuple[str, Any, str]]:
    """``(key, default, help)`` for every plain key, in declaration order (for README and CLI)."""
    return [
        (f.metadata["key"], f.default, f.metadata["help"])
        for f in fields(RunConfig)
        if not f.metadata["key"].endswith(".*")
    ]
