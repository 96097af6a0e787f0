"""Typed run configuration: defaults, TOML files, ``key=value`` overrides and validation.

Keys are kebab-case as in Flower's run config: the field ``num_server_rounds`` is the key
``num-server-rounds``. Every key is declared once, below, with its constraints in its annotation
and its meaning in :class:`RunConfig`'s docstring; :mod:`fedmm.params` checks it. Five namespaces
pass parameters through to the component they configure and are validated by that component's own
declaration when the config is built: ``strategy.<param>``, ``objective.<param>``, ``selection.<param>``,
``dataset.<option>`` and ``encoder.<modality>``.
"""

from __future__ import annotations

import importlib
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, ClassVar

import tomli_w

from fedmm.params import (
    FRACTION,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    POSITIVE,
    Checked,
    Interval,
    Options,
    Search,
    Spec,
    check_search,
    check_value,
    config_specs,
    specs,
)
from fedmm.presets import preset_values
from fedmm.registry import did_you_mean
from fedmm.strategies.recipes import STRATEGIES

NAMESPACES = ("strategy", "objective", "selection", "dataset", "encoder")
#: Keys that moved, and where to: an old config that sets one gets an error naming the new key.
MOVED_KEYS = {"proximal-mu": "strategy.mu (with strategy=fedprox)"}

# The local training settings, shared with fedmm.training.TrainConfig (one rule for both).
LOCAL_EPOCHS = Interval(int, 1, None, closed="left")
BATCH_SIZE = Interval(int, 2, None, closed="left")  # batch-norm needs two rows
LR = POSITIVE
MOMENTUM = Interval(float, 0.0, 1.0, closed="left")
WEIGHT_DECAY = NON_NEGATIVE
PROXIMAL_MU = NON_NEGATIVE
PRECISION = Options("fp32", "bf16", "fp16")
OPTIMIZER = Options("sgd", "adam")
ADAM_BETA2 = Interval(float, 0.0, 1.0, closed="left")


@dataclass(frozen=True)
class RunConfig(Checked):
    """Everything one federated run needs. Build it with :func:`load_config` or :meth:`from_mapping`;
    building it checks every key (:class:`fedmm.params.Checked`) and the namespaces
    (:meth:`validate`).

    Parameters
    ----------
    dataset:
        registry name of the dataset (see `fedmm datasets`)
    data_dir:
        directory of user-owned data (CREMA-D, arrays); empty for embedded data
    seed:
        one seed for partition, allocation, selection and initialisation
    partition:
        how train data is split among clients
    num_clients:
        number of clients; 0 = one per natural group (natural only)
    dirichlet_alpha:
        Dirichlet concentration of the label skew
    client_size_cap:
        Dirichlet: stop giving a client data above cap * N / num-clients samples
    allocation:
        which modalities each client holds
    multi_ratio:
        fraction of multimodal clients (allocation=multi-ratio)
    modality_fractions:
        allocation=fractions: e.g. 'acc=0.3,gyro=0.3,acc+gyro=0.4'
    missing_rate:
        allocation=missing-rate: chance a client lacks a modality
    validation:
        validation split, held out of train (docs/validation.md): auto = the data's own (arrays
        val/), else held-out users where the data has users, else a stratified fraction; off = none
        (train whole, the numbers of runs before the split existed)
    validation_fraction:
        validation=auto: fraction of the users, or of every class's train rows, held out
    num_server_rounds:
        number of federated rounds
    clients_per_round:
        budget of clients trained per round (ignored by selection=all)
    strategy:
        server strategy (a registered recipe: fedavg, fedprox, fedcmi, cmsfed); its parameters are
        strategy.<param>, e.g. strategy.mu for fedprox
    selection:
        client/modality selection policy; auto = the strategy's own (cmsfed for strategy=cmsfed,
        else all)
    fraction_evaluate:
        fraction of clients that evaluate the global model on their own data each round (central
        evaluation always runs)
    min_available_nodes:
        nodes to wait for before round 1; 0 = all clients
    round_timeout:
        seconds to wait for replies in a round, and for min-available-nodes nodes to connect before
        round 1
    objective:
        local training objective (docs/objectives.md); auto = the strategy's own (fedcmi, cmsfed),
        else ce
    local_epochs:
        local epochs per round
    batch_size:
        local mini-batch size
    lr:
        local SGD learning rate
    lr_min:
        learning rate of the last round when lr-decay-start > 0 (must then be in (0, lr])
    lr_decay_start:
        0 = constant lr; else lr until this round, then lr - (lr - lr-min) * round / num-server-
        rounds (FedCMI/CMSFed schedule)
    momentum:
        local SGD momentum (optimizer=sgd)
    weight_decay:
        local L2 weight decay (SGD and Adam add weight-decay * w to the gradient)
    optimizer:
        local optimizer: sgd (momentum) or adam (betas 0.9 and adam-beta2, eps 1e-8; a fresh state
        every round); preset=paper sets the reference's
    adam_beta2:
        optimizer=adam: the second-moment decay beta2
    preset:
        none = fedmm's defaults; paper = each method's paper/reference-script hyperparameters
        (optimizer, lr, batch size, method parameters; docs/presets.md); keys you set win
    precision:
        precision of local training steps: fp32, or autocast bf16 (Ampere+ GPUs, CPU) or fp16 (with
        loss scaling); evaluation stays fp32
    embed_dim:
        feature width of every encoder
    device:
        auto (CUDA when present), cpu, cuda or cuda:N
    client_num_cpus:
        CPUs per simulated client (Ray actor)
    client_num_gpus:
        GPU fraction per simulated client; -1 = auto (0.5 when CUDA is present, else 0)
    engine:
        how fedmm simulate runs the clients: ray (the Flower Simulation Engine, clients in parallel
        actors, GPU-aware) or inline (every client in this process, one after the other: the same
        numbers, no start-up, so short runs end sooner)
    ray_address:
        fedmm simulate on a running Ray cluster: its address (e.g. '10.0.0.1:6379', or 'auto' for
        RAY_ADDRESS); empty = a local Ray instance of this process
    out_dir:
        results directory (fedmm simulate --out sets it)
    plugins:
        modules imported before the rest of the config is read, e.g. ['mypkg.fedext']: they
        register your objectives, policies, datasets, strategies and client facts
        (docs/extending.md); every process that reads the config imports them (server, each client,
        Ray workers), so they must be importable there (installed, or on PYTHONPATH)
    objective_params, selection_params, dataset_options, encoders:
        The ``objective.*``, ``selection.*``, ``dataset.*`` and ``encoder.*`` namespaces as given,
        validated by the objective, the selection policy, the dataset and the encoder registry.
    """

    label_format = "config key '{}'"

    # data and scenario
    dataset: str = "hapt"
    data_dir: str = ""
    seed: Annotated[int, NON_NEGATIVE_INT] = 0
    partition: Annotated[str, Options("natural", "iid", "dirichlet")] = "natural"
    num_clients: Annotated[int, NON_NEGATIVE_INT] = 0
    dirichlet_alpha: Annotated[float, POSITIVE] = 3.0
    client_size_cap: Annotated[float, Interval(float, 1.0, None, closed="left")] = 1.1
    allocation: Annotated[str, Options("all", "multi-ratio", "fractions", "missing-rate")] = "multi-ratio"
    multi_ratio: Annotated[float, FRACTION] = 0.5
    modality_fractions: str = ""
    missing_rate: Annotated[float, FRACTION] = 0.0
    validation: Annotated[str, Options("auto", "off")] = "auto"
    validation_fraction: Annotated[float, Interval(float, 0.0, 1.0, closed="neither")] = 0.15
    # federation
    num_server_rounds: Annotated[int, Interval(int, 1, None, closed="left")] = 20
    clients_per_round: Annotated[int, Interval(int, 1, None, closed="left")] = 10
    strategy: str = "fedavg"
    selection: str = "auto"
    fraction_evaluate: Annotated[float, FRACTION] = 0.0
    min_available_nodes: Annotated[int, NON_NEGATIVE_INT] = 0
    round_timeout: Annotated[float, POSITIVE] = 600.0
    # local training
    objective: str = "auto"
    local_epochs: Annotated[int, LOCAL_EPOCHS, Search(1, 5)] = 2
    batch_size: Annotated[int, BATCH_SIZE] = 32
    lr: Annotated[float, LR, Search(1e-3, 0.3, log=True)] = 0.05
    lr_min: Annotated[float, NON_NEGATIVE] = 0.0
    lr_decay_start: Annotated[int, NON_NEGATIVE_INT] = 0
    momentum: Annotated[float, MOMENTUM, Search(0.0, 0.95)] = 0.9
    weight_decay: Annotated[float, WEIGHT_DECAY, Search(1e-6, 1e-2, log=True)] = 0.0001
    optimizer: Annotated[str, OPTIMIZER] = "sgd"
    adam_beta2: Annotated[float, ADAM_BETA2] = 0.999
    preset: Annotated[str, Options("none", "paper")] = "none"
    precision: Annotated[str, PRECISION] = "fp32"
    # model
    embed_dim: Annotated[int, Interval(int, 1, None, closed="left")] = 64
    # resources
    device: str = "auto"
    client_num_cpus: Annotated[float, POSITIVE] = 1.0
    client_num_gpus: Annotated[float, Interval(float, -1.0, 1.0, closed="both")] = -1.0
    engine: Annotated[str, Options("ray", "inline")] = "ray"
    ray_address: str = ""
    # output
    out_dir: str = ""
    # extensions
    plugins: tuple[str, ...] = ()
    # namespaced parameters, validated by their component
    strategy_params: dict[str, Any] = field(default_factory=dict)
    objective_params: dict[str, Any] = field(default_factory=dict)
    selection_params: dict[str, Any] = field(default_factory=dict)
    dataset_options: dict[str, Any] = field(default_factory=dict)
    encoders: dict[str, str] = field(default_factory=dict)

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RunConfig:
        """Validate flat ``values`` (kebab-case keys, dotted for namespaces) over the defaults."""
        plain = {key_of(f.name): f.name for f in fields(cls) if f.name not in _NAMESPACE_FIELDS.values()}
        kwargs: dict[str, Any] = {}
        namespaced: dict[str, dict[str, Any]] = {ns: {} for ns in NAMESPACES}
        for key, value in values.items():
            head, dot, rest = key.partition(".")
            if dot and head in NAMESPACES:
                if head in ("strategy", "objective", "selection", "dataset") and rest == "name":
                    key = head  # [objective] name = "mnl" is the same as objective = "mnl"
                else:
                    namespaced[head][rest] = value
                    continue
            if key in MOVED_KEYS:
                raise ValueError(f"config key '{key}' is now '{MOVED_KEYS[key]}'; rename it in your config")
            if key not in plain:
                raise ValueError(_unknown_key_message(key, [*plain, *(f"{ns}.<name>" for ns in NAMESPACES)]))
            kwargs[plain[key]] = value
        kwargs["plugins"] = import_plugins(kwargs.get("plugins", ()))  # before any registry is read
        strategy = kwargs.get("strategy", cls.strategy)
        if strategy not in STRATEGIES:
            raise ValueError(f"config key 'strategy' {Options(*STRATEGIES.names()).violation(strategy)}")
        kwargs["objective"] = resolve_objective(strategy, kwargs.get("objective", cls.objective))
        kwargs["selection"] = resolve_selection(strategy, kwargs.get("selection", cls.selection))
        given = {k.replace("-", "_") for k in values}
        for key, value in preset_values(str(kwargs.get("preset", cls.preset)), strategy=strategy,
                                        objective=kwargs["objective"], selection=kwargs["selection"],
                                        num_server_rounds=kwargs.get("num_server_rounds", cls.num_server_rounds)
                                        ).items():  # preset = "paper": what the user did not set (fedmm/presets.py)
            if key.replace("-", "_") not in given:
                head, dot, rest = key.partition(".")
                if dot:
                    namespaced[head][rest] = value
                else:
                    kwargs[plain[key]] = value
        return cls(**kwargs, **{_NAMESPACE_FIELDS[ns]: given for ns, given in namespaced.items()})

    def __post_init__(self) -> None:
        super().__post_init__()  # every plain key by its declaration
        import_plugins(self.plugins)  # a config built directly (from_mapping has imported them)
        self.validate()

    def validate(self) -> None:
        """Check the combinations between the plain keys, then each namespace with its component's
        rule: the objective's and the selection policy's ``Params``, the dataset's options, the
        encoder registry's names (imported here: ``import fedmm.config`` stays torch-free)."""
        if self.partition != "natural" and self.num_clients == 0:
            raise ValueError(
                f"config key 'num-clients' must be > 0 with partition='{self.partition}' "
                "(0 means one client per natural group and only works with partition='natural')"
            )
        if self.allocation == "fractions" and not self.modality_fractions:
            raise ValueError("allocation='fractions' needs 'modality-fractions', e.g. 'acc=0.3,gyro=0.3,acc+gyro=0.4'")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"config key 'device' {Options('auto', 'cpu', 'cuda', 'cuda:N').violation(self.device)}")
        if self.engine == "inline" and self.ray_address:
            raise ValueError(
                f"config key 'ray-address' = {self.ray_address!r} needs engine='ray' (engine='inline' runs every "
                "client in this process); drop one of them"
            )
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
        from fedmm.data.registry import check_options
        from fedmm.models.encoders import ENCODERS
        from fedmm.objectives.registry import objective_class, parse_params
        from fedmm.strategies.selection import parse_policy_params

        # kept, so that what builds the strategy, objective and policy never parses a value again
        object.__setattr__(self, "parsed", {
            "strategy": STRATEGIES.get(self.strategy).parse_params(self.strategy, self.strategy_params,
                                                                   label=_namespace_label("strategy")),
            "objective": parse_params(objective_class(self.objective), self.objective_params,
                                      label=_namespace_label("objective")),
            "selection": parse_policy_params(self.selection, self.selection_params, label=_namespace_label("selection")),
        })
        check_options(self.dataset, self.dataset_options, label=lambda shown: f"config key '{shown}'")  # dataset.<opt>
        for modality, name in self.encoders.items():
            if name not in ENCODERS:
                ENCODERS.get(name)  # raises naming the nearest encoder

    #: ``"strategy"``, ``"objective"``, ``"selection"`` -> that component's validated ``Params``
    #: instance, set by :meth:`validate` (not a field: it is derived from the namespaces).
    parsed: ClassVar[Mapping[str, Any]]

    def __hash__(self) -> int:  # the dict fields make the generated hash fail; the TOML text is canonical
        # the text is kept: clients hash the config of every message (caches keyed by it)
        text = self.__dict__.get("_hash_text")
        if text is None:
            text = self.to_toml()
            object.__setattr__(self, "_hash_text", text)
        return hash(text)

    # -- output ----------------------------------------------------------------------------------
    def to_flat(self) -> dict[str, Any]:
        """Flat kebab-case mapping that :meth:`from_mapping` turns back into this config."""
        namespaces = {name: ns for ns, name in _NAMESPACE_FIELDS.items()}
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in namespaces:
                out.update({f"{namespaces[f.name]}.{k}": v for k, v in sorted(value.items())})
            elif f.name == "plugins" and not value:
                continue  # left out when empty: a run without plugins sends and records the same text as before
            else:
                out[key_of(f.name)] = value
        return out

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_flat())

    def replace(self, **overrides: Any) -> RunConfig:
        """A copy with kebab-case ``overrides`` applied and validated."""
        return RunConfig.from_mapping({**self.to_flat(), **overrides})


#: Namespace -> the RunConfig field that holds its parameters.
_NAMESPACE_FIELDS = {"strategy": "strategy_params", "objective": "objective_params",
                     "selection": "selection_params", "dataset": "dataset_options", "encoder": "encoders"}


def key_of(name: str) -> str:
    """The kebab-case config key of field ``name`` (``num_server_rounds`` -> ``num-server-rounds``)."""
    return name.replace("_", "-")


RunConfig.field_names = {f.name: key_of(f.name) for f in fields(RunConfig)}
check_search(RunConfig, "the run config")  # a search range outside the valid one fails at import
_PLUGINS = next(s for s in specs(RunConfig) if s.name == "plugins")


def _namespace_label(namespace: str) -> Callable[[str], str]:
    """How messages name a parameter of ``namespace`` read from the config (``config key 'objective.lambda'``)."""
    return lambda name: f"config key '{namespace}.{name}'"


def import_plugins(modules: Any) -> tuple[str, ...]:
    """Import the modules of config key ``plugins`` (their registrations run) and return their names.

    Parameters
    ----------
    modules:
        Module names: a list or tuple, or one comma-separated string (``--set plugins=a.b,c``).

    Raises
    ------
    ValueError
        Not a list of strings, or a module (or a package above it) that cannot be found.
    """
    names = check_value(RunConfig.field_label("plugins"), modules, _PLUGINS)
    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name is None or not (name == err.name or name.startswith(f"{err.name}.")):
                raise  # the plugin itself imports something missing: its own error says what
            raise ValueError(f"config key 'plugins' names module {name!r}, which cannot be imported ({err}); "
                             "install the package that holds it, or put its directory on PYTHONPATH (the "
                             "server and every client process import it)") from None
    return names


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


def _unknown_key_message(key: str, valid: list[str]) -> str:
    return f"unknown config key '{key}'{did_you_mean(key, valid)} Valid keys: {', '.join(sorted(valid))}"


def config_keys() -> list[tuple[str, Any, str]]:
    """``(key, default, help)`` for every plain key, in declaration order (for README and CLI)."""
    return [(key_of(s.name), s.default, s.help) for s in _plain_specs()]


def _plain_specs() -> list[Spec]:
    """The declarations of the plain (not namespaced) keys, in declaration order."""
    return [s for s in specs(RunConfig) if s.name not in _NAMESPACE_FIELDS.values()]


@dataclass(frozen=True)
class ParamRow:
    """One parameter as ``fedmm config`` lists it.

    Parameters
    ----------
    key:
        The config key (``lr``, ``objective.lambda``, ``dataset.test_users``, ``encoder.<modality>``).
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


def param_classes() -> dict[str, dict[str, type]]:
    """Namespace -> registered name -> its ``Params`` dataclass (a :class:`fedmm.params.Checked` one).

    The one place a registry of ``Params`` joins :func:`parameter_rows` (``fedmm config``): one line
    per namespace (imported here: ``import fedmm.config`` stays torch-free)."""
    from fedmm.objectives.registry import OBJECTIVES
    from fedmm.strategies.selection import POLICIES

    return {
        "strategy": {name: recipe.params for name, recipe in STRATEGIES.items()},
        "objective": {name: cls.Params for name, cls in OBJECTIVES.items()},
        "selection": {name: cls.Params for name, cls in POLICIES.items()},
    }


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
        "run": {"": [ParamRow(key_of(s.name), "", s.allowed(), s.default, s.help, _search_text(s))
                     for s in _plain_specs()]}}
    for ns, classes in param_classes().items():
        components[ns] = {n: [ParamRow(f"{ns}.{s.name}", f"{ns} {n}", s.allowed(), s.default, s.help, _search_text(s))
                              for s in config_specs(cls)] for n, cls in classes.items()}
    encoder = f"one of {', '.join(ENCODERS.names())}"
    components["dataset"] = {n: [
        *(ParamRow(f"dataset.{s.name}", f"dataset {n}", s.allowed(), s.default, s.help) for s in entry.options()),
        ParamRow("encoder.<modality>", f"dataset {n}", encoder, dict(entry.encoders),
                 "default encoder of a modality, by its kind (unless encoder.<modality> names one)"),
    ] for n, entry in DATASETS.items()}
    components["encoder"] = {"": [ParamRow("encoder.<modality>", "encoder", encoder, "",
                                           "encoder of a modality (default: the dataset's, see its rows)")]}
    if namespace is None:
        return [row for by_name in components.values() for rows in by_name.values() for row in rows]
    if namespace not in components:
        raise ValueError(f"unknown namespace {namespace!r}{did_you_mean(namespace, list(components))} "
                         f"Valid: {', '.join(components)}")
    if name is None:
        return [row for rows in components[namespace].values() for row in rows]
    if name not in components[namespace]:
        raise ValueError(f"unknown {namespace} {name!r}{did_you_mean(name, list(components[namespace]))} "
                         f"Valid: {', '.join(components[namespace])}")
    return components[namespace][name]


def _search_text(spec: Spec) -> str:
    return f"search {spec.search.describe()}" if spec.search is not None else ""
