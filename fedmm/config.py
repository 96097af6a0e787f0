"""Typed run configuration: defaults, TOML files, ``key=value`` overrides and validation.

Keys are kebab-case as in Flower's run config: the field ``num_server_rounds`` is the key
``num-server-rounds``. Every key is declared once, below, with its constraints in its annotation
and its meaning in :class:`RunConfig`'s docstring; :mod:`fedmm.params` checks it. Five namespaces
pass parameters through to the component they configure and are validated by that component's own
declaration when the config is built: ``strategy.<param>``, ``objective.<param>``, ``selection.<param>``,
``dataset.<option>`` and ``encoder.<modality>``.

Why one module of this size: it declares every run key once (the class docstring is the key
reference, a line per key); reading text and listing live in config_text.py and config_doc.py.
"""

from __future__ import annotations

import importlib
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, ClassVar

import tomli_w

from fedmm.config_text import flatten, parse_overrides, read_toml
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
    config_name,
    specs,
)
from fedmm.presets import preset_values
from fedmm.registry import did_you_mean
from fedmm.strategies.recipes import STRATEGIES

NAMESPACES = ("strategy", "objective", "selection", "dataset", "encoder", "devices")


class QuietAtDefault:
    """Annotation marker of a key left out of the config text while it holds its default (the
    simulated clock and experiment tracking off, SGD, no preset, no plugins), so that a run without
    it sends and records the same text, byte counts and checkpoint digest as before the key existed.
    (``validation`` is never left out: a checkpoint trained without a validation split must not
    resume with one.)"""


QUIET = QuietAtDefault()
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
        how train data is split among clients; auto = natural when the dataset has natural clients
        (hapt's users, CREMA-D's actors, arrays with groups), else dirichlet over num-clients
        clients (20 when 0)
    num_clients:
        number of clients; 0 = one per natural group (natural), 20 (auto on a dataset without
        natural clients)
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
        0 = constant lr; else lr until this round, then lr - (lr - lr-min) * round /
        num-server-rounds (FedCMI/CMSFed schedule)
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
    tensorboard:
        write TensorBoard event files into <out-dir>/tensorboard (config, per-round metrics per
        modality, the plots); docs/tracking.md
    mlflow:
        log the run to MLflow (params, per-round metrics per modality, the plots and summary as
        artifacts); docs/tracking.md
    mlflow_uri:
        MLflow tracking URI (e.g. 'sqlite:///mlflow.db', a directory, 'http://host:5000'); empty =
        sqlite:///<out-dir>/mlflow.db; needs mlflow = true
    mlflow_experiment:
        MLflow experiment that the run is logged under (created when missing)
    devices:
        device profiles and the simulated clock (docs/devices.md): off, model (drawn from the
        devices.<param> keys) or the path of a CSV/Parquet trace file
    round_close:
        how a round closes on the simulated clock (needs devices): all (wait for every client),
        deadline (round-deadline), overcommit (select K(1+overcommit), keep the first K to finish)
    round_deadline:
        seconds of simulated time a round waits with round-close=deadline
    overcommit:
        extra fraction of clients selected with round-close=overcommit
    plugins:
        modules imported before the rest of the config is read, e.g. ['mypkg.fedext']: they
        register your objectives, policies, datasets, strategies and client facts
        (docs/extending.md); every process that reads the config imports them (server, each client,
        Ray workers), so they must be importable there (installed, or on PYTHONPATH)
    objective_params, selection_params, dataset_options, encoders, devices_params:
        The ``objective.*``, ``selection.*``, ``dataset.*``, ``encoder.*`` and ``devices.*``
        namespaces as given, validated by the objective, the selection policy, the dataset, the
        encoder registry and the device model (:class:`fedmm.devices.DeviceParams`).
    """

    label_format = "config key '{}'"

    # data and scenario
    dataset: str = "hapt"
    data_dir: str = ""
    seed: Annotated[int, NON_NEGATIVE_INT] = 0
    partition: Annotated[str, Options("auto", "natural", "iid", "dirichlet")] = "auto"
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
    optimizer: Annotated[str, OPTIMIZER, QUIET] = "sgd"
    adam_beta2: Annotated[float, ADAM_BETA2, QUIET] = 0.999
    preset: Annotated[str, Options("none", "paper"), QUIET] = "none"
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
    # experiment tracking (fedmm.tracking), off by default; left out of the config text when off
    tensorboard: Annotated[bool, QUIET] = False
    mlflow: Annotated[bool, QUIET] = False
    mlflow_uri: Annotated[str, QUIET] = ""
    mlflow_experiment: Annotated[str, QUIET] = "fedmm"
    # simulated devices and clock (fedmm.devices, fedmm.clock)
    devices: Annotated[str, QUIET] = "off"
    round_close: Annotated[str, Options("all", "deadline", "overcommit"), QUIET] = "all"
    round_deadline: Annotated[float, POSITIVE, QUIET] = 600.0
    overcommit: Annotated[float, NON_NEGATIVE, QUIET] = 0.3
    # extensions
    plugins: Annotated[tuple[str, ...], QUIET] = ()
    # namespaced parameters, validated by their component
    strategy_params: dict[str, Any] = field(default_factory=dict)
    objective_params: dict[str, Any] = field(default_factory=dict)
    selection_params: dict[str, Any] = field(default_factory=dict)
    dataset_options: dict[str, Any] = field(default_factory=dict)
    encoders: dict[str, str] = field(default_factory=dict)
    devices_params: dict[str, Any] = field(default_factory=dict)

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RunConfig:
        """Validate flat ``values`` (kebab-case keys, dotted for namespaces) over the defaults."""
        plain = {config_name(f.name): f.name for f in fields(cls) if f.name not in _NAMESPACE_FIELDS.values()}
        kwargs: dict[str, Any] = {}
        namespaced: dict[str, dict[str, Any]] = {ns: {} for ns in NAMESPACES}
        for key, value in values.items():
            head, dot, rest = key.partition(".")
            if dot and head in NAMESPACES:
                if head in ("strategy", "objective", "selection", "dataset", "devices") and rest == "name":
                    key = head  # [objective] name = "mnl" is the same as objective = "mnl"
                else:
                    namespaced[head][rest] = value
                    continue
            if key in MOVED_KEYS:
                raise ValueError(f"config key '{key}' is now '{MOVED_KEYS[key]}'; rename it in your config")
            if key not in plain and config_name(key) in plain:
                raise ValueError(
                    f"config key '{key}' is now '{config_name(key)}': config keys are kebab-case, as in Flower's "
                    "run config; rename it"
                )
            if key not in plain:
                raise ValueError(_unknown_key_message(key, [*plain, *(f"{ns}.<name>" for ns in NAMESPACES)]))
            kwargs[plain[key]] = value
        kwargs["plugins"] = import_plugins(kwargs.get("plugins", ()))  # before any registry is read
        strategy = kwargs.get("strategy", cls.strategy)
        if strategy not in STRATEGIES:
            raise ValueError(f"config key 'strategy' {Options(*STRATEGIES.names()).violation(strategy)}")
        kwargs["objective"] = resolve_objective(strategy, kwargs.get("objective", cls.objective))
        kwargs["selection"] = resolve_selection(strategy, kwargs.get("selection", cls.selection))
        given = set(values)
        for key, value in preset_values(
            str(kwargs.get("preset", cls.preset)),
            strategy=strategy,
            objective=kwargs["objective"],
            selection=kwargs["selection"],
            num_server_rounds=kwargs.get("num_server_rounds", cls.num_server_rounds),
        ).items():  # preset = "paper": what the user did not set (fedmm/presets.py)
            if key not in given:
                head, dot, rest = key.partition(".")
                if dot:
                    namespaced[head][rest] = value
                else:
                    kwargs[plain[key]] = value
        return cls(**kwargs, **{_NAMESPACE_FIELDS[ns]: given for ns, given in namespaced.items()})

    def __post_init__(self) -> None:
        self.check_fields()  # every plain key by its declaration
        import_plugins(self.plugins)  # a config built directly (from_mapping has imported them)
        self.validate()

    def validate(self) -> None:
        """Check the combinations between the plain keys, then each namespace with its component's
        rule: the objective's and the selection policy's ``Params``, the dataset's options, the
        encoder registry's names (imported here: ``import fedmm.config`` stays torch-free)."""
        if self.partition not in ("natural", "auto") and self.num_clients == 0:
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
        if self.mlflow_uri and not self.mlflow:
            raise ValueError(
                f"config key 'mlflow-uri' = {self.mlflow_uri!r} needs mlflow = true (it only says where "
                "MLflow runs go); add mlflow = true or drop mlflow-uri"
            )
        if self.ray_address and (problem := ray_address_problem(self.ray_address)):
            raise ValueError(
                f"config key 'ray-address' = {self.ray_address!r} {problem}; give the Ray head's "
                "'<host>:<port>' (e.g. '10.0.0.1:6379'), 'ray://<host>:<port>', 'auto', or leave it "
                "empty for a local Ray instance"
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
        if self.round_close != "all" and self.devices == "off":
            raise ValueError(
                f"config key 'round-close' = {self.round_close!r} needs the simulated clock: set "
                "'devices' to 'model' or a trace file (docs/devices.md)"
            )
        if self.devices_params and self.devices == "off":
            raise ValueError(
                f"config key 'devices.{sorted(self.devices_params)[0]}' needs devices = 'model' or a "
                "trace file; devices is 'off'"
            )
        from fedmm.data.registry import check_options
        from fedmm.devices import DeviceParams
        from fedmm.models.encoders import ENCODERS
        from fedmm.objectives.registry import objective_class, parse_params
        from fedmm.params import parse
        from fedmm.strategies.selection import parse_policy_params

        # kept, so that what builds the strategy, objective and policy never parses a value again
        object.__setattr__(
            self,
            "parsed",
            {
                "strategy": STRATEGIES.get(self.strategy).parse_params(
                    self.strategy, self.strategy_params, label=_namespace_label("strategy")
                ),
                "objective": parse_params(
                    objective_class(self.objective), self.objective_params, label=_namespace_label("objective")
                ),
                "selection": parse_policy_params(
                    self.selection, self.selection_params, label=_namespace_label("selection")
                ),
                "devices": parse(
                    DeviceParams, self.devices_params, component="devices", label=_namespace_label("devices")
                ),
                "dataset": check_options(
                    self.dataset, self.dataset_options, label=lambda shown: f"config key '{shown}'"
                ),  # the loader's keyword arguments
            },
        )
        for name in self.encoders.values():
            if name not in ENCODERS:
                ENCODERS.get(name)  # raises naming the nearest encoder

    #: ``"strategy"``, ``"objective"``, ``"selection"``, ``"devices"`` -> that component's validated
    #: ``Params`` instance, ``"dataset"`` -> the loader's checked keyword arguments; set by
    #: :meth:`validate` (not a field: it is derived from the namespaces).
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
            elif f.name in _QUIET_FIELDS and value == f.default:
                continue
            else:
                out[config_name(f.name)] = value
        return out

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_flat())

    def replace(self, **overrides: Any) -> RunConfig:
        """A copy with kebab-case ``overrides`` applied and validated."""
        return RunConfig.from_mapping({**self.to_flat(), **overrides})


#: Namespace -> the RunConfig field that holds its parameters.
_NAMESPACE_FIELDS = {
    "strategy": "strategy_params",
    "objective": "objective_params",
    "selection": "selection_params",
    "dataset": "dataset_options",
    "encoder": "encoders",
    "devices": "devices_params",
}


RunConfig.field_names = {f.name: config_name(f.name) for f in fields(RunConfig)}
#: The fields marked :data:`QUIET` in their annotation.
_QUIET_FIELDS = frozenset(
    name
    for name, hint in typing.get_type_hints(RunConfig, include_extras=True).items()
    if typing.get_origin(hint) is Annotated and any(isinstance(m, QuietAtDefault) for m in typing.get_args(hint)[1:])
)
check_search(RunConfig, "the run config")  # a search range outside the valid one fails at import
_PLUGINS = next(s for s in specs(RunConfig) if s.name == "plugins")


def _namespace_label(namespace: str) -> Callable[[str], str]:
    """How messages name a parameter of ``namespace`` read from the config (``config key 'objective.lambda'``)."""
    return lambda name: f"config key '{namespace}.{name}'"


_RAY_ADDRESS = re.compile(r"(?:ray://)?(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d+)")


def ray_address_problem(address: str) -> str | None:
    """What is wrong with a ``ray-address`` value (``None``: a form Ray takes): ``auto``,
    ``<host>:<port>`` or ``ray://<host>:<port>``, the port in 1..65535.

    Parameters
    ----------
    address:
        The config value (not empty).
    """
    if address == "auto":
        return None
    match = _RAY_ADDRESS.fullmatch(address)
    if match is None:
        return "is not an address of the form '<host>:<port>'"
    if not 1 <= int(match.group(1)) <= 65535:
        return f"has port {match.group(1)}, outside 1..65535"
    return None


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
        if not all(part.isidentifier() for part in name.split(".")):
            raise ValueError(
                f"config key 'plugins' names {name!r}, which is not an absolute module name (dotted "
                "identifiers such as 'mypkg.fedext'; relative names like '.ext' cannot be imported)"
            )
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name is None or not (name == err.name or name.startswith(f"{err.name}.")):
                raise ValueError(
                    f"config key 'plugins': module {name!r} needs module {err.name!r}, which is not "
                    f"installed ({err}); install it where the run reads its config (the server "
                    "and every client process)"
                ) from None
            raise ValueError(
                f"config key 'plugins' names module {name!r}, which cannot be imported ({err}); "
                "install the package that holds it, or put its directory on PYTHONPATH (the "
                "server and every client process import it)"
            ) from None
        except Exception as err:  # the plugin's own code raised while it was imported
            raise ValueError(
                f"config key 'plugins': importing module {name!r} failed with "
                f"{type(err).__name__}: {err}; fix the module (or remove it from plugins)"
            ) from None
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


def plain_specs() -> list[Spec]:
    """The declarations of the plain (not namespaced) keys, in declaration order."""
    return [s for s in specs(RunConfig) if s.name not in _NAMESPACE_FIELDS.values()]


def _unknown_key_message(key: str, valid: list[str]) -> str:
    return f"unknown config key '{key}'{did_you_mean(key, valid)} Valid keys: {', '.join(sorted(valid))}"


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
