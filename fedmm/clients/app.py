"""The Flower ClientApp: answers discovery queries, trains locally, evaluates the global model.

Every message carries the resolved run config (TOML text, :data:`fedmm.protocol.RUN_CONFIG`), so a client
builds the same dataset, scenario, model and objective as the server in simulation and in
deployment alike. The node's own facts come from its node config (``--node-config`` on a
SuperNode; the simulation engine injects the first two):

* ``partition-id``, ``num-partitions`` (required): which client of the run's scenario this node is;
* ``data-dir`` (optional): a directory with the node's own copy of a user-owned dataset (CREMA-D);
  the node then trains on the whole train split found there instead of a partition of the shared data;
* ``modalities`` (optional, e.g. ``'audio,visual'``): the modalities the node holds, overriding the
  scenario's allocation (default: the allocation, or every modality for a node with its own data-dir).

In ``fedmm simulate`` the server registers its roster from the scenario instead of asking every
node (no ``query`` messages) and names the partition in every message it sends a node
(:attr:`fedmm.protocol.Request.partition_id`); a node without its own ``data-dir`` or
``modalities`` holds that partition (vetted against its ``num-partitions``), whatever its
node-config ``partition-id``. A deployment server names none, so SuperNodes keep their own.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import time
from dataclasses import dataclass

import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedmm.clients.trust import check_plugins
from fedmm.config import RunConfig
from fedmm.data import LABEL_KEY, TensorDict, subset
from fedmm.data.registry import DATASETS, is_user_owned
from fedmm.facts import CLIENT_FACTS
from fedmm.groups import keys_for_modalities
from fedmm.objectives import RoundContext
from fedmm.protocol import (
    ARRAYS,
    Request,
    evaluate_reply,
    info_reply,
    model_facts_reply,
    requested_partition,
    run_config_text,
    train_reply,
)
from fedmm.records import to_record, torch_state
from fedmm.training import evaluate, resolve_device, train_local
from fedmm.workspace import (
    dataset_of,
    loaded_dataset,
    model_of,
    objective_of,
    parse_run_config,
    scenario_of,
    train_config_of,
)

app = ClientApp()

REQUIRED_NODE_KEYS = ("partition-id", "num-partitions")


@dataclass(frozen=True)
class Node:
    """What this node is: where its data comes from and which modalities it holds.

    Parameters
    ----------
    run:
        The run config as this node uses it: the server's, except that ``data-dir`` is the node's own
        directory when its node config has one (so the dataset and the model's input shapes come from
        the node's data).
    partition_id:
        Node config ``partition-id``: the scenario partition this node holds; for a node with its own
        ``data-dir`` only its identity in the results and part of its training seed.
    modalities:
        The modalities the node holds, in the dataset's order: node config ``modalities`` when given,
        else every modality of the dataset for a node with its own ``data-dir``, else the scenario's
        allocation for ``partition_id``.
    data_dir:
        Node config ``data-dir``, or ``None`` when the node holds a partition of the shared dataset.
    """

    run: RunConfig
    partition_id: int
    modalities: tuple[str, ...]
    data_dir: str | None = None

    @classmethod
    def from_message(cls, msg: Message, context: Context) -> Node:
        """The node described by ``context.node_config`` for the run whose config ``msg`` carries
        (and the partition the message names, see the module docstring).

        Raises ``ValueError`` naming the node-config key to fix when a required key is missing,
        ``partition-id``/``num-partitions`` do not fit the run, ``data-dir`` is given for a dataset
        that ships with the install, or ``modalities`` names a modality the dataset lacks.
        """
        node_config = context.node_config
        text = run_config_text(msg)
        check_plugins(text, node_config)  # before any plugin is imported (fedmm.clients.trust)
        run = parse_run_config(text)
        missing = [k for k in REQUIRED_NODE_KEYS if k not in node_config]
        if missing:
            raise ValueError(
                f"this node has no {', '.join(missing)} in its node config; start the SuperNode with "
                '--node-config "partition-id=<i> num-partitions=<n>"'
            )
        pid, nparts = int(node_config["partition-id"]), int(node_config["num-partitions"])
        data_dir = str(node_config.get("data-dir", "")).strip() or None
        if data_dir is None:
            scenario = scenario_of(run)
            if nparts != len(scenario.partitions):
                raise ValueError(
                    f"node config says num-partitions={nparts} but the run's scenario has "
                    f"{len(scenario.partitions)} clients; set num-clients (or the number of SuperNodes) to match"
                )
        else:
            if not is_user_owned(run.dataset):  # only user-owned data can come from a node's own data-dir
                raise ValueError(
                    f"node config data-dir={data_dir!r} applies to user-owned datasets such as "
                    f"{', '.join(n for n, e in DATASETS.items() if e.user_owned)}; the run's dataset "
                    f"{run.dataset!r} ships with the install and has no directory to read: remove data-dir from "
                    "this node's --node-config "
                    "(the node then holds partition partition-id of the shared dataset)"
                )
            if run.num_clients and nparts != run.num_clients:
                raise ValueError(
                    f"node config says num-partitions={nparts} but the run has num-clients="
                    f"{run.num_clients}; make them agree"
                )
            run = dataclasses.replace(run, data_dir=data_dir)
        if not 0 <= pid < nparts:
            raise ValueError(f"partition-id={pid} is outside 0..{nparts - 1}")
        requested = requested_partition(msg)
        if requested is not None and data_dir is None and "modalities" not in node_config:
            if not 0 <= requested < nparts:
                raise ValueError(
                    f"the server asked this node to hold partition {requested}, outside "
                    f"0..{nparts - 1} (its num-partitions)"
                )
            pid = requested
        dataset = dataset_of(run)
        if "modalities" in node_config:
            held = _parse_modalities(str(node_config["modalities"]), dataset.modality_names)
        elif data_dir is not None:
            held = tuple(dataset.modality_names)
        else:
            held = tuple(scenario_of(run).modalities[pid])
        return cls(run=run, partition_id=pid, modalities=held, data_dir=data_dir)

    @property
    def data(self) -> TensorDict:
        """This node's training data: only its modalities and ``"y"``."""
        return _local_data(self.run, self.partition_id, self.data_dir, self.modalities)


def _parse_modalities(text: str, valid: list[str]) -> tuple[str, ...]:
    """Node config ``modalities`` (comma-separated) as a tuple in the dataset's order."""
    names = {m.strip() for m in text.split(",") if m.strip()}
    unknown = sorted(names - set(valid))
    if unknown or not names:
        what = f"names {', '.join(repr(m) for m in unknown)}, not" if unknown else "names no modality of"
        raise ValueError(
            f"node config modalities={text!r} {what} the dataset's modalities; give a "
            f"comma-separated subset of: {', '.join(valid)} (e.g. modalities='{valid[0]}')"
        )
    return tuple(m for m in valid if m in names)


@functools.lru_cache(maxsize=64)
def _local_data(run: RunConfig, partition_id: int, data_dir: str | None, modalities: tuple[str, ...]) -> TensorDict:
    """A node's training data, cached per (run, partition id, data-dir, modalities), so nodes that
    share a process (simulation) never share an entry.

    Parameters
    ----------
    run:
        The node's run config (its ``data-dir`` already the node's own when ``data_dir`` is set).
    partition_id:
        Scenario partition whose rows the node holds (unused with ``data_dir``).
    data_dir:
        The node's own data directory: the node holds the whole train split there; ``None``: the
        node holds partition ``partition_id`` of the shared dataset.
    modalities:
        The modalities kept (with the labels); every other modality is dropped.
    """
    if data_dir is None:
        return subset(dataset_of(run).train, scenario_of(run).partitions[partition_id], list(modalities))
    dataset = loaded_dataset(run)  # the node's own files: all of their train split (no validation rows)
    return {k: dataset.train[k] for k in (*modalities, LABEL_KEY)}


def _set_threads(run: RunConfig) -> None:
    torch.set_num_threads(max(1, int(run.client_num_cpus)))


def _round_context(
    request: Request, run: RunConfig, modalities: list[str], device: torch.device, global_model: torch.nn.Module | None
) -> RoundContext:
    return RoundContext(
        server_round=request.server_round,
        num_rounds=run.num_server_rounds,
        local_epochs=run.local_epochs,
        modalities=modalities,
        global_model=global_model,
        extras=dict(request.extras),
        device=device,
    )


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Discovery: partition id, held modalities and number of examples."""
    node = Node.from_message(msg, context)
    return info_reply(msg, node.partition_id, node.modalities, int(node.data[LABEL_KEY].shape[0]))


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received groups on the modalities the server assigned; upload only those groups."""
    started = time.perf_counter()
    node = Node.from_message(msg, context)
    run = node.run
    _set_threads(run)
    request = Request.from_message(msg)
    server_round = request.server_round
    modalities = [m for m in request.modalities if m in node.modalities]
    if not modalities:
        raise ValueError(
            f"server asked for modalities {','.join(request.modalities)!r}; this node holds {node.modalities}"
        )
    device = resolve_device(run.device)
    objective = objective_of(run)
    model = model_of(run, objective)
    model.load_state_dict(torch_state(msg.content[ARRAYS]), strict=False)
    model.to(device)
    teacher = copy.deepcopy(model).eval().requires_grad_(False) if objective.uses_global_model else None
    ctx = _round_context(request, run, modalities, device, teacher)
    data = node.data
    train_config = train_config_of(
        run,
        server_round=server_round,
        proximal_mu=(request.proximal_mu or 0.0) + objective.proximal_mu,
        seed=run.seed * 100_003 + server_round * 1_009 + node.partition_id,
    )
    if request.epochs is not None:  # the strategy's update pass before round 1 trains a single epoch
        train_config = dataclasses.replace(train_config, epochs=request.epochs)
    # The client facts the server asks for (CMSFed's rho_k, with every held modality: the server then
    # sends the groups of all of them), each measured when its entry says: from the received model
    # in the update pass, after training in the rounds (docs/methods/cmsfed.md §5.1, §5.5)
    asked = {name: CLIENT_FACTS.get(name) for name in request.client_facts}
    early = {
        name: fact.compute(model, data, request.order)
        for name, fact in asked.items()
        if fact.before_training_in_update_pass and server_round == 0
    }
    result = train_local(model, data, objective, ctx, train_config, augment=dataset_of(run).train_augment)
    facts = dict(result.facts)
    for name, fact in asked.items():
        facts[name] = early[name] if name in early else fact.compute(model, data, request.order)
    state = model.state_dict()
    arrays = to_record(state, keys_for_modalities(state.keys(), modalities))
    return train_reply(msg, arrays, result.num_examples, result.loss, time.perf_counter() - started, facts)


@app.evaluate()
def evaluate_local(msg: Message, context: Context) -> Message:
    """Loss and accuracy of the received global model on this node's own data; when the server asks
    for them (``global-model-facts``), the objective's facts of that model instead."""
    node = Node.from_message(msg, context)
    _set_threads(node.run)
    device = resolve_device(node.run.device)
    objective = objective_of(node.run)
    model = model_of(node.run, objective)
    model.load_state_dict(torch_state(msg.content[ARRAYS]), strict=False)
    model.to(device)
    data = node.data
    request = Request.from_message(msg)
    # The objective's round state (e.g. active boosting classifiers) shapes its predictions.
    objective.begin_round(model, data, _round_context(request, node.run, list(node.modalities), device, None))
    n = int(data[LABEL_KEY].shape[0])
    if request.global_model_facts:
        return model_facts_reply(msg, n, objective.global_model_facts(model, data, list(node.modalities)))
    metrics = evaluate(model, data, objective, device=device)
    return evaluate_reply(msg, n, float(metrics["loss"]), float(metrics["acc"]))
