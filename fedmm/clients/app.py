"""The Flower ClientApp: answers discovery queries, trains locally, evaluates the global model.

Every message carries the resolved run config (``config["run-config"]``, TOML text), so a client
builds the same dataset, scenario, model and objective as the server in simulation and in
deployment alike. The node's own facts come from its node config: ``partition-id`` and
``num-partitions`` (injected by the simulation engine, passed with ``--node-config`` on a SuperNode).
"""

from __future__ import annotations

import copy
import functools
import time
from dataclasses import dataclass

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedmm.config import RunConfig
from fedmm.data import TensorDict, client_data
from fedmm.objectives import RoundContext
from fedmm.records import decode_extras, keys_for_modalities, to_record
from fedmm.training import evaluate, resolve_device, train_local
from fedmm.workspace import dataset_of, model_of, objective_of, parse_run_config, scenario_of, train_config_of

app = ClientApp()

REQUIRED_NODE_KEYS = ("partition-id", "num-partitions")


@dataclass(frozen=True)
class Node:
    """What this node is: its partition of the run's scenario and the modalities it holds."""

    run: RunConfig
    partition_id: int
    modalities: tuple[str, ...]

    @classmethod
    def from_message(cls, msg: Message, context: Context) -> Node:
        run = parse_run_config(str(msg.content["config"]["run-config"]))
        missing = [k for k in REQUIRED_NODE_KEYS if k not in context.node_config]
        if missing:
            raise ValueError(
                f"this node has no {', '.join(missing)} in its node config; start the SuperNode with "
                "--node-config \"partition-id=<i> num-partitions=<n>\""
            )
        pid, nparts = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
        scenario = scenario_of(run)
        if nparts != len(scenario.partitions):
            raise ValueError(
                f"node config says num-partitions={nparts} but the run's scenario has "
                f"{len(scenario.partitions)} clients; set num-clients (or the number of SuperNodes) to match"
            )
        if not 0 <= pid < nparts:
            raise ValueError(f"partition-id={pid} is outside 0..{nparts - 1}")
        return cls(run=run, partition_id=pid, modalities=tuple(scenario.modalities[pid]))


@functools.lru_cache(maxsize=64)
def _local_data(run: RunConfig, partition_id: int) -> TensorDict:
    """This partition's training data (cached per partition id, never shared across partitions)."""
    return client_data(dataset_of(run), scenario_of(run), partition_id)


def _set_threads(run: RunConfig) -> None:
    torch.set_num_threads(max(1, int(run.client_num_cpus)))


def _round_context(msg: Message, run: RunConfig, modalities: list[str], device: torch.device,
                   global_model: torch.nn.Module | None) -> RoundContext:
    return RoundContext(
        server_round=int(msg.content["config"]["server-round"]),
        num_rounds=run.num_server_rounds,
        modalities=modalities,
        global_model=global_model,
        extras=decode_extras(msg.content.get("extras"), msg.content.get("extra-arrays")),
        device=device,
    )


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Discovery: partition id, held modalities and number of examples."""
    node = Node.from_message(msg, context)
    data = _local_data(node.run, node.partition_id)
    info = ConfigRecord(
        {
            "partition-id": node.partition_id,
            "modalities": ",".join(node.modalities),
            "num-examples": int(data["y"].shape[0]),
        }
    )
    return Message(RecordDict({"info": info}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received groups on the modalities the server assigned; upload only those groups."""
    started = time.perf_counter()
    node = Node.from_message(msg, context)
    run = node.run
    _set_threads(run)
    config = msg.content["config"]
    server_round = int(config["server-round"])
    modalities = [m for m in str(config["modalities"]).split(",") if m in node.modalities]
    if not modalities:
        raise ValueError(f"server asked for modalities {config['modalities']!r}; this node holds {node.modalities}")
    device = resolve_device(run.device)
    objective = objective_of(run)
    model = model_of(run, objective)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict(), strict=False)
    model.to(device)
    ctx = _round_context(msg, run, modalities, device, copy.deepcopy(model).eval().requires_grad_(False))
    data = _local_data(run, node.partition_id)
    train_config = train_config_of(
        run, server_round=server_round, proximal_mu=float(config["proximal-mu"]),
        seed=run.seed * 100_003 + server_round * 1_009 + node.partition_id,
    )
    result = train_local(model, data, objective, ctx, train_config)
    state = model.state_dict()
    arrays = to_record(state, keys_for_modalities(state.keys(), modalities))
    metrics = MetricRecord(
        {
            "num-examples": result.num_examples,
            "train-loss": result.loss,
            "seconds": time.perf_counter() - started,
        }
    )
    content = RecordDict({"arrays": arrays, "metrics": metrics})
    if result.facts:
        content["facts"] = MetricRecord(dict(result.facts))
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate_local(msg: Message, context: Context) -> Message:
    """Loss and accuracy of the received global model on this node's own data."""
    node = Node.from_message(msg, context)
    _set_threads(node.run)
    device = resolve_device(node.run.device)
    objective = objective_of(node.run)
    model = model_of(node.run, objective)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict(), strict=False)
    model.to(device)
    data = _local_data(node.run, node.partition_id)
    # The objective's round state (e.g. active boosting classifiers) shapes its predictions.
    objective.begin_round(model, data, _round_context(msg, node.run, list(node.modalities), device, None))
    metrics = evaluate(model, data, objective, device=device)
    reply = MetricRecord(
        {"num-examples": int(data["y"].shape[0]), "loss": float(metrics["loss"]), "acc": float(metrics["acc"])}
    )
    return Message(RecordDict({"metrics": reply}), reply_to=msg)
