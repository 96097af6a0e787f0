"""The roster registered from the scenario (``fedmm simulate``) against discovery by ``query`` messages."""

import dataclasses

import pandas as pd
import pytest
from flwr.app import ArrayRecord, Context, MessageType, RecordDict
from inprocess import simulate_in_process

from fedmm.config import load_config
from fedmm.inline import InlineGrid
from fedmm.results import CLIENTS_FILE

FEDERATION = [
    "dataset=synthetic",
    "partition=dirichlet",
    "dirichlet-alpha=0.5",
    "num-clients=6",
    "allocation=multi-ratio",
    "multi-ratio=0.5",
    "strategy=fedavg",
    "selection=random",
    "clients-per-round=3",
    "num-server-rounds=3",
    "local-epochs=1",
    "batch-size=16",
    "device=cpu",
    "seed=5",
]


def _strategy(run, from_scenario: bool):
    from fedmm.server.plan import build_strategy, prepare

    plan = dataclasses.replace(prepare(run), roster_from_scenario=from_scenario)
    return plan, build_strategy(plan)


def _discover(plan, strategy, grid):
    """One discovery step of ``strategy`` on ``grid``: the queries it sent, and the roster."""
    from fedmm.records import to_record
    from fedmm.server.loop import exchange

    strategy.begin_round(1, to_record(plan.model.state_dict()))
    queries = strategy.configure_discovery(1, grid)
    strategy.aggregate_discovery(1, exchange(grid, queries, 10.0))
    return queries, strategy.roster


@pytest.mark.usefixtures("flower_identity")
def test_the_roster_from_the_scenario_equals_what_discovery_learns_without_one_message():
    run = load_config(None, FEDERATION)
    grid = InlineGrid(6, shuffle=11)  # node ids unrelated to partition ids, as in Flower's engine
    plan, old = _strategy(run, False)
    queries, discovered = _discover(plan, old, grid)
    assert len(queries) == 6
    plan, new = _strategy(run, True)
    sent, registered = _discover(plan, new, grid)
    assert sent == []
    assert registered.clients == discovered.clients  # partition, modalities and size of every client
    sizes = sorted(c.num_examples for c in registered.clients.values())
    assert len(set(sizes)) > 1  # dirichlet: unequal sizes, so a wrong map would show
    assert sorted(registered.node_of.values()) == sorted(grid.get_node_ids())
    for node, client in registered.client_of.items():
        assert registered.limit(node) == len(plan.scenario.partitions[client])


@pytest.mark.usefixtures("flower_identity")
def test_a_node_holds_the_partition_its_messages_name_and_refuses_one_outside_its_federation():
    from fedmm.clients.app import Node
    from fedmm.protocol import Request, query_message

    run = load_config(None, FEDERATION)
    text = run.to_toml()

    def node(partition_id, **node_config):
        msg = Request(text, 1, ("m0",), partition_id=partition_id).to_message(7, MessageType.TRAIN, ArrayRecord(), ())
        context = Context(
            run_id=1,
            node_id=7,
            state=RecordDict(),
            run_config={},
            node_config={"partition-id": 0, "num-partitions": 6, **node_config},
        )
        return Node.from_message(msg, context)

    assert node(4).partition_id == 4
    assert node(None).partition_id == 0
    assert node(4, modalities="m0").partition_id == 0  # a node with its own modalities keeps its partition
    with pytest.raises(ValueError, match="partition 6, outside 0..5"):
        node(6)
    with pytest.raises(ValueError, match="outside 0..5"):
        node(-1)
    assert query_message(7, text, MessageType.QUERY).content["config"].get("partition-id") is None


@pytest.mark.usefixtures("flower_identity")
def test_a_simulated_run_trains_every_client_on_its_own_partition_as_with_discovery(tmp_path):
    run = load_config(None, FEDERATION)
    old = simulate_in_process(run, tmp_path / "old", roster_from_scenario=False, shuffle=3)
    new = simulate_in_process(run, tmp_path / "new", roster_from_scenario=True, shuffle=3)
    assert new["final"] == pytest.approx(old["final"], abs=1e-9)
    a, b = (pd.read_csv(tmp_path / d / CLIENTS_FILE) for d in ("old", "new"))
    cols = ["round", "partition-id", "modalities-held", "modalities-trained", "status", "num-examples", "train-loss"]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    assert (b["status"] == "ok").all() and len(b) == 9


@pytest.mark.usefixtures("flower_identity")
def test_a_resumed_run_maps_its_clients_to_new_nodes_correctly(tmp_path):
    from fedmm.checkpoint import load_checkpoint

    run = load_config(None, [*FEDERATION, "selection=divfl"])  # the update pass: every client's state counts
    whole = simulate_in_process(run, tmp_path / "whole", shuffle=1)

    def stop_after_round_1(row):
        if row["round"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        simulate_in_process(run, tmp_path / "split", shuffle=1, on_round=stop_after_round_1)
    checkpoint = load_checkpoint(tmp_path / "split")
    assert checkpoint.server_round == 1
    # the resumed run's nodes have other ids (and other node-config partition ids) than the first's
    resumed = simulate_in_process(run, tmp_path / "split", shuffle=2, resume=checkpoint)
    assert resumed["final"] == pytest.approx(whole["final"], abs=1e-9)
    a, b = (pd.read_csv(tmp_path / d / CLIENTS_FILE) for d in ("whole", "split"))
    cols = ["round", "partition-id", "modalities-held", "modalities-trained", "status", "num-examples", "train-loss"]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    assert (b["round"] == 0).sum() == 6  # the update pass ran once, before round 1, not again on resume


@pytest.mark.usefixtures("flower_identity")
@pytest.mark.parametrize(("strategy", "copied"), [("fedavg", False), ("fedcmi", True)])
def test_a_client_copies_the_received_model_only_for_an_objective_that_uses_it(monkeypatch, strategy, copied):
    import fedmm.clients.app as client
    from fedmm.protocol import Request
    from fedmm.records import to_record
    from fedmm.server.plan import prepare

    run = load_config(None, [*FEDERATION, f"strategy={strategy}"])
    plan = prepare(run)
    seen = []
    original = client.train_local
    monkeypatch.setattr(
        client,
        "train_local",
        lambda model, data, obj, ctx, *a, **k: (
            seen.append(ctx.global_model),
            original(model, data, obj, ctx, *a, **k),
        )[1],
    )
    mods = tuple(plan.scenario.modalities[2])
    msg = Request(run.to_toml(), 1, mods, partition_id=2).to_message(
        3, MessageType.TRAIN, to_record(plan.model.state_dict()), mods
    )
    context = Context(
        run_id=1, node_id=3, state=RecordDict(), run_config={}, node_config={"partition-id": 2, "num-partitions": 6}
    )
    reply = client.app(msg, context)
    assert not reply.has_error()
    assert (seen[0] is not None) is copied
