"""A SuperNode's node config: required keys, its own data directory, a modalities override.

The ClientApp's handlers run in-process on messages built as the server builds them
(:class:`fedmm.protocol.Request`); no deployment is started.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from flwr.app import Context, Message, MessageType, RecordDict
from test_cremad import write_cremad_dir

from fedmm.clients.app import Node, app
from fedmm.config import RunConfig, load_config
from fedmm.groups import key_modality
from fedmm.protocol import (
    ARRAYS,
    INFO,
    METRICS,
    MODALITIES,
    NUM_EXAMPLES,
    PARTITION_ID,
    TRAIN_LOSS,
    Request,
    query_message,
)
from fedmm.records import to_record
from fedmm.workspace import model_of, objective_of

pytestmark = pytest.mark.usefixtures("flower_identity")

SYNTHETIC = [
    "dataset=synthetic",
    "dataset.num-train=60",
    "dataset.num-test=20",
    "partition=iid",
    "num-clients=3",
    "allocation=all",
    "local-epochs=1",
    "batch-size=8",
    "device=cpu",
    "client-num-cpus=1",
]


@pytest.fixture
def cremad_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A node's own CREMA-D directory: the fixture of test_cremad.py (3 actors x 6 emotions)."""
    monkeypatch.setenv("FEDMM_CACHE_DIR", str(tmp_path / "cache"))
    return write_cremad_dir(tmp_path / "node-data")


def cremad_run(tmp_path: Path) -> RunConfig:
    """A CREMA-D run whose server-side data-dir does not exist on this node: everything the node
    reads must come from its own data-dir."""
    return load_config(
        None,
        [
            "dataset=cremad",
            f"data-dir={str(tmp_path / 'server-copy')!r}",
            "dataset.image-size=16",
            "encoder.audio=mlp",
            "encoder.visual=mlp",
            "embed-dim=8",
            "partition=iid",
            "num-clients=2",
            "local-epochs=1",
            "batch-size=6",
            "lr=0.001",
            "device=cpu",
            "client-num-cpus=1",
        ],
    )


def context(**node_config) -> Context:
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})


def server_message(
    run: RunConfig, message_type: str, data_dir: str | None = None, /, modalities: str = "", **request
) -> Message:
    """A message as ModalityAwareFedAvg sends it; train/evaluate carry the global model's groups
    for ``modalities`` (comma-separated), built as the server builds them from its copy of the data
    (here the node's ``data_dir``, which has the same shapes), and the :class:`Request` ``request``."""
    if message_type == MessageType.QUERY:
        return query_message(7, run.to_toml(), message_type)
    server = dataclasses.replace(run, data_dir=data_dir) if data_dir else run
    state = model_of(server, objective_of(server)).state_dict()
    mods = tuple(modalities.split(","))
    return Request(run.to_toml(), modalities=mods, **request).to_message(7, message_type, to_record(state), mods)


def query(run: RunConfig, /, **node_config) -> dict:
    """The ``info`` record of the node's reply to a discovery query."""
    return dict(app(server_message(run, MessageType.QUERY), context(**node_config)).content[INFO])


def train(run: RunConfig, asked: str, /, **node_config) -> Message:
    """The node's reply to a train message for modalities ``asked`` (comma-separated)."""
    msg = server_message(
        run, MessageType.TRAIN, node_config.get("data-dir"), server_round=1, modalities=asked, proximal_mu=0.0
    )
    return app(msg, context(**node_config))


def node(run: RunConfig, /, **node_config) -> Node:
    return Node.from_message(server_message(run, MessageType.QUERY), context(**node_config))


def test_a_node_without_partition_keys_is_told_which_keys_to_pass() -> None:
    run = load_config(None, SYNTHETIC)
    with pytest.raises(ValueError, match=r"no partition-id, num-partitions in its node config") as err:
        query(run)
    assert '--node-config "partition-id=<i> num-partitions=<n>"' in str(err.value)
    with pytest.raises(ValueError, match=r"no num-partitions in its node config"):
        query(run, **{"partition-id": 0, "data-dir": "/somewhere"})


def test_modalities_outside_the_dataset_are_refused_naming_the_valid_ones() -> None:
    run = load_config(None, SYNTHETIC)
    keys = {"partition-id": 0, "num-partitions": 3}
    with pytest.raises(ValueError, match=r"modalities='m0,video' names 'video', not the dataset's") as err:
        query(run, **keys, modalities="m0,video")
    assert "subset of: m0, m1" in str(err.value)
    with pytest.raises(ValueError, match="names no modality"):
        query(run, **keys, modalities=" , ")


def test_data_dir_on_a_dataset_that_ships_with_the_install_is_an_error() -> None:
    run = load_config(None, SYNTHETIC)
    with pytest.raises(ValueError, match="applies to user-owned datasets such as arrays, cremad") as err:
        query(run, **{"partition-id": 0, "num-partitions": 3, "data-dir": "/data/me"})
    assert "'synthetic' ships with the install" in str(err.value) and "remove data-dir" in str(err.value)


def test_a_node_with_its_own_data_dir_holds_its_whole_train_split(cremad_dir: Path, tmp_path: Path) -> None:
    run = cremad_run(tmp_path)
    keys = {"partition-id": 1, "num-partitions": 2, "data-dir": str(cremad_dir)}
    info = query(run, **keys)
    # 18 clips, one per class held out for test: the node holds the 12 others, both modalities
    assert info == {PARTITION_ID: 1, MODALITIES: "audio,visual", NUM_EXAMPLES: 12}
    me = node(run, **keys)
    assert me.run.data_dir == str(cremad_dir) and me.data_dir == str(cremad_dir)
    assert set(me.data) == {"audio", "visual", "y"} and me.data["visual"].shape == (12, 1, 3, 16, 16)

    reply = train(run, "audio,visual", **keys)
    metrics = reply.content[METRICS]
    assert metrics[NUM_EXAMPLES] == 12 and math.isfinite(metrics[TRAIN_LOSS])
    uploaded = {key_modality(k) for k in reply.content[ARRAYS].keys()}
    assert uploaded == {None, "audio", "visual"}

    evaluation = app(
        server_message(run, MessageType.EVALUATE, str(cremad_dir), server_round=1, modalities="audio,visual"),
        context(**keys),
    )
    assert evaluation.content[METRICS][NUM_EXAMPLES] == 12

    with pytest.raises(ValueError, match="num-partitions=3 but the run has num-clients=2"):
        query(run, **{**keys, "num-partitions": 3})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        query(run, **{**keys, "data-dir": str(tmp_path / "nowhere")})


def test_the_modalities_key_overrides_what_a_node_holds(cremad_dir: Path, tmp_path: Path) -> None:
    run = cremad_run(tmp_path)
    keys = {"partition-id": 0, "num-partitions": 2, "data-dir": str(cremad_dir), "modalities": "audio"}
    assert query(run, **keys) == {PARTITION_ID: 0, MODALITIES: "audio", NUM_EXAMPLES: 12}
    assert set(node(run, **keys).data) == {"audio", "y"}
    # the server asks for both; the node trains and uploads only what it holds
    reply = train(run, "audio,visual", **keys)
    assert {key_modality(k) for k in reply.content[ARRAYS].keys()} == {None, "audio"}

    # a partition of the shared dataset: the same rows, only the modalities named (canonical order)
    shared = load_config(None, SYNTHETIC)
    part = {"partition-id": 2, "num-partitions": 3}
    allocated, overridden = node(shared, **part), node(shared, **part, modalities="m1")
    assert allocated.modalities == ("m0", "m1") and overridden.modalities == ("m1",)
    assert set(allocated.data) == {"m0", "m1", "y"} and set(overridden.data) == {"m1", "y"}
    assert torch.equal(allocated.data["y"], overridden.data["y"])
    assert node(shared, **part, modalities="m1, m0").modalities == ("m0", "m1")
    assert query(shared, **part, modalities="m1") == {
        PARTITION_ID: 2,
        MODALITIES: "m1",
        NUM_EXAMPLES: int(allocated.data["y"].shape[0]),
    }
    # another partition with the same override is another cache entry
    assert not torch.equal(
        node(shared, **{**part, "partition-id": 0}, modalities="m1").data["m1"][:5], overridden.data["m1"][:5]
    )


@pytest.mark.integration
@pytest.mark.slow  # over a minute on 2 cores: `make test-slow`
def test_with_supernode_auth_only_registered_nodes_join_the_run(tmp_path: Path) -> None:
    import pandas as pd
    from test_deploy import flwr_run, wait_for_summary

    from fedmm.deploy import CONNECTION, LocalDeployment, free_port, generate_node_key

    with pytest.raises(ValueError, match="needs TLS"):
        LocalDeployment(tmp_path / "insecure", 2, auth=True)
    out = tmp_path / "out"
    with LocalDeployment(tmp_path / "deploy", 2, tls=True, auth=True) as deployment:
        registered = set(deployment.node_ids.values())
        assert len(registered) == 2
        # a node whose key was never registered is refused and exits
        intruder = deployment.workdir / "keys" / "intruder"
        generate_node_key(intruder)
        deployment._spawn(
            "intruder",
            [
                "flower-supernode",
                "--root-certificates",
                str(deployment.certs.ca),
                "--superlink",
                deployment.address,
                "--port",
                str(free_port()),
                "--node-config",
                "partition-id=0 num-partitions=2",
                "--auth-supernode-private-key",
                str(intruder),
            ],
        )
        assert deployment.processes["intruder"].wait(timeout=120) != 0
        assert "Failed to activate SuperNode" in (deployment.workdir / "intruder.log").read_text()
        proc = flwr_run(deployment, out, rounds=1)
        try:
            summary = wait_for_summary(out, proc, timeout=300)
        finally:
            proc.kill()
        listed = json.loads(deployment._flwr("supernode", "list", CONNECTION, "--format", "json"))
    assert {int(n["node-id"]) for n in listed["nodes"] if n["status"] == "online"} == registered
    assert summary["status"] == "completed" and summary["rounds"] == 1
    clients = pd.read_csv(out / "clients.csv")
    assert set(clients["node-id"]) == registered and (clients["status"] == "ok").all()
    assert sorted(clients["partition-id"]) == [0, 1]


def test_the_round_context_carries_the_runs_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    import fedmm.clients.app as client_app
    from fedmm.objectives import Schedule

    run = load_config(None, [*SYNTHETIC, "num-server-rounds=7", "local-epochs=3"])
    seen = []
    real = client_app.train_local

    def spy(model, data, objective, ctx, config, **kwargs):
        seen.append(ctx)
        return real(model, data, objective, ctx, config, **kwargs)

    monkeypatch.setattr(client_app, "train_local", spy)
    train(run, "m0,m1", **{"partition-id": 0, "num-partitions": 3})
    assert [(c.server_round, c.schedule) for c in seen] == [(1, Schedule(num_rounds=7, local_epochs=3))]
