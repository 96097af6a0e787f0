"""The worked examples of docs/extending.md, each run as a user's own module.

Every code block marked ``<!-- module: NAME -->`` in the doc is written, as is, to ``NAME.py`` in a
fresh directory outside the package; the run config's ``plugins`` key imports it (the mechanism the
doc describes) and a one-round federation runs with it in process. No file of ``fedmm/`` changes.
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import MessageType
from inprocess import run_in_process, simulate_in_process

from fedmm.config import load_config
from fedmm.data.registry import DATASETS
from fedmm.facts import CLIENT_FACTS
from fedmm.inline import InlineGrid
from fedmm.objectives.registry import OBJECTIVES
from fedmm.protocol import ARRAYS, NUM_EXAMPLES, metrics_of
from fedmm.records import from_record
from fedmm.strategies.recipes import STRATEGIES
from fedmm.strategies.selection import POLICIES, ClientState
from fedmm.workspace import parse_run_config

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
MODULES = ("ext_objective", "ext_policy", "ext_fact", "ext_dataset", "ext_fedmedian", "ext_fedavgm", "ext_uniform")
REGISTRIES = (OBJECTIVES, POLICIES, CLIENT_FACTS, DATASETS, STRATEGIES)
SYN = [
    "dataset=synthetic",
    "num-server-rounds=1",
    "local-epochs=1",
    "partition=iid",
    "num-clients=6",
    "clients-per-round=3",
]


def doc_modules() -> dict[str, str]:
    """Module name -> the code of its block in docs/extending.md."""
    return dict(re.findall(r"<!-- module: (\w+) -->\n```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL))


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    """The doc's modules written to a directory on sys.path (outside the package); afterwards the
    entries they registered, the modules and the path are removed again."""
    where = tmp_path_factory.mktemp("userpkg")
    for name, code in doc_modules().items():
        (where / f"{name}.py").write_text(code)
    before = [set(r.names()) for r in REGISTRIES]
    sys.path.insert(0, str(where))
    yield where
    sys.path.remove(str(where))
    for name in MODULES:
        sys.modules.pop(name, None)
    for registry, names in zip(REGISTRIES, before, strict=True):
        for name in set(registry.names()) - names:
            registry.remove(name)


def config(module: str, *sets: str):
    return load_config(None, [f"plugins={module}", *sets])


def results(rows):
    """The round-1 row's test metrics and training loss (bytes and seconds depend on the config text)."""
    return {k: v for k, v in rows[-1].items() if k.startswith(("test/", "train/"))}


def test_the_doc_has_every_example():
    assert sorted(doc_modules()) == sorted(MODULES)


# -- the plugins key ------------------------------------------------------------------------------
def test_plugins_key_imports_modules_and_names_a_missing_one(plugin_dir):
    run = load_config(None, ["plugins=ext_objective", "objective=label-smoothing"])  # registered on import
    assert run.plugins == ("ext_objective",) and run.objective == "label-smoothing"
    assert load_config(None, ["plugins=ext_objective,ext_policy"]).plugins == ("ext_objective", "ext_policy")
    with pytest.raises(ValueError, match=r"config key 'plugins' names module 'no_such_plugin_mod'.*PYTHONPATH"):
        load_config(None, ["plugins=no_such_plugin_mod"])


def test_plugins_travel_in_the_config_text_and_an_empty_list_is_left_out(plugin_dir):
    assert "plugins" not in load_config().to_toml()  # runs without plugins send the same text as before
    run = config("ext_policy", "selection=round-robin")
    assert 'plugins = [\n    "ext_policy",\n]' in run.to_toml()
    assert parse_run_config(run.to_toml()) == run  # what every client reads (and imports the plugin by)


# -- a local objective ----------------------------------------------------------------------------
def test_label_smoothing_loss_by_hand(plugin_dir):
    objective = config("ext_objective", "objective=label-smoothing", "objective.smoothing=0.2")
    from fedmm.objectives import build_objective

    obj = build_objective("label-smoothing", objective.objective_params)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    batch = {"y": torch.tensor([0, 1])}
    lse1, lse2 = math.log(math.exp(2) + 1), math.log(1 + math.e)
    ce = ((lse1 - 2) + (lse2 - 1)) / 2  # -log p of the true class
    uniform = (((lse1 - 2) + lse1) / 2 + (lse2 + (lse2 - 1)) / 2) / 2  # mean over classes of -log p
    assert float(obj.loss(lambda b: logits, batch)) == pytest.approx(0.8 * ce + 0.2 * uniform, rel=1e-6)
    with pytest.raises(ValueError, match=r"objective.smoothing' must be < 1.0"):
        config("ext_objective", "objective=label-smoothing", "objective.smoothing=1.0")


def test_a_federation_trains_with_the_objectives_loss(plugin_dir, flower_identity):
    ce = results(run_in_process(load_config(None, [*SYN, "objective=ce"])))
    zero = results(
        run_in_process(config("ext_objective", *SYN, "objective=label-smoothing", "objective.smoothing=0.0"))
    )
    smooth = results(
        run_in_process(config("ext_objective", *SYN, "objective=label-smoothing", "objective.smoothing=0.3"))
    )
    assert zero == ce  # eps = 0 is plain cross-entropy, bit for bit
    assert smooth["train/loss"] != ce["train/loss"]


# -- a selection policy ---------------------------------------------------------------------------
def test_round_robin_picks_by_hand(plugin_dir):
    from fedmm.strategies.selection import build_policy

    config("ext_policy")  # imports the plugin
    policy = build_policy("round-robin", {"offset": 5}, seed=0)
    clients = [ClientState(i, ("m0",), 10) for i in range(4)]
    # round 2, budget 2: start = 5 + (2 - 1) * 2 = 7 -> clients 7 % 4 = 3, then 0
    assert [a.client_id for a in policy.select(2, clients, 2)] == [3, 0]


def test_a_federation_trains_the_policys_picks(plugin_dir, flower_identity, tmp_path):
    run = config("ext_policy", *SYN, "selection=round-robin", "selection.offset=2")
    simulate_in_process(run, tmp_path / "out")
    with open(tmp_path / "out" / "clients.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["round"] == "1"]
    assert [int(r["partition-id"]) for r in rows] == [2, 3, 4]
    assert {r["status"] for r in rows} == {"ok"}


# -- a client fact ----------------------------------------------------------------------------------
def test_the_policy_receives_the_client_fact_by_name(plugin_dir, flower_identity):
    run = config(
        "ext_fact",
        *SYN,
        "partition=dirichlet",
        "num-clients=4",
        "dataset.num-classes=4",
        "dirichlet-alpha=0.5",
        "selection=all-majority-share",
    )
    plans = []
    run_in_process(run, on_round=lambda plan, row: plans.append(plan))
    plan = plans[0]
    y = plan.dataset.train["y"].numpy()
    expected = {}
    for client, rows in enumerate(plan.scenario.partitions):
        counts = np.bincount(y[rows])
        expected[client] = counts.max() / counts.sum()
    assert plan.policy.shares == expected
    assert len(set(expected.values())) > 1  # the partitions differ, so the values tell clients apart


# -- a dataset ----------------------------------------------------------------------------------------
def test_a_federation_on_the_users_dataset(plugin_dir, flower_identity, tmp_path):
    import ext_dataset

    parser = argparse.ArgumentParser()
    prepare = ext_dataset.add_prepare(parser)
    assert prepare(parser.parse_args(["--out", str(tmp_path / "blobs")])) == 0  # 400 examples, 3 groups
    run = config(
        "ext_dataset",
        "dataset=blobs",
        f"data-dir={tmp_path / 'blobs'}",
        "num-server-rounds=1",
        "local-epochs=1",
        "partition=natural",
        "num-clients=0",
        "validation=off",
    )  # every group a client (auto holds one group out for validation)
    entry = DATASETS.get("blobs")
    assert entry.user_owned and entry.prepare is ext_dataset.add_prepare
    plans: list = []
    rows = run_in_process(run, on_round=lambda plan, row: plans.append(plan))
    plan = plans[0]
    assert plan.dataset.modality_names == ["left", "right"]
    assert [len(p) for p in plan.scenario.partitions] == [100, 100, 100]  # 300 train rows, groups i % 3
    assert plan.dataset.test["y"].shape[0] == 100
    assert entry.default_encoders(plan.dataset.modalities) == {"left": "mlp", "right": "mlp"}
    assert rows[1]["clients-ok"] == 3


# -- a strategy: FedAvgM -------------------------------------------------------------------------------
def test_fedavgm_step_by_hand(plugin_dir):
    config("ext_fedavgm")
    from ext_fedavgm import FedAvgM

    strategy = FedAvgM.__new__(FedAvgM)
    strategy.server_lr, strategy.momentum, strategy.velocity = 0.5, 0.9, {}
    count = np.array(3, dtype=np.int64)
    first = strategy.step(
        {"w": np.array([1.0], np.float32), "n": count},
        {"w": np.array([3.0], np.float32), "n": np.array(5, dtype=np.int64)},
    )
    # d = 3 - 1 = 2, v = 2, w = 1 + 0.5 * 2 = 2; the integer buffer takes the FedAvg value
    assert first["w"].tolist() == [2.0] and int(first["n"]) == 5
    second = strategy.step({"w": np.array([2.0], np.float32)}, {"w": np.array([2.5], np.float32)})
    # d = 0.5, v = 0.9 * 2 + 0.5 = 2.3, w = 2 + 0.5 * 2.3 = 3.15
    assert second["w"].tolist() == pytest.approx([3.15], rel=1e-6)


def test_a_federation_with_fedavgm_moves_by_server_lr(plugin_dir, flower_identity):
    def final_and_initial(run):
        states = []
        run_in_process(
            run,
            on_round=lambda plan, row: states.append(
                {k: v.detach().clone().numpy() for k, v in plan.model.state_dict().items()}
            ),
        )
        return states[-1], states[0]  # after round 1, and the initial model (row of round 0)

    fedavg, init = final_and_initial(load_config(None, [*SYN, "strategy=fedavg"]))
    fedavgm, init_m = final_and_initial(config("ext_fedavgm", *SYN, "strategy=fedavgm", "strategy.server-lr=0.5"))
    floats = [k for k, v in init.items() if np.issubdtype(v.dtype, np.floating)]
    assert all(np.array_equal(init[k], init_m[k]) for k in init)
    moved = [k for k in floats if not np.array_equal(fedavg[k], init[k])]
    assert moved
    for k in floats:  # round 1: v = d, so w = w0 + 0.5 * (fedavg - w0)
        np.testing.assert_allclose(fedavgm[k], init[k] + 0.5 * (fedavg[k] - init[k]), rtol=1e-5, atol=1e-6)


# -- a strategy of its own -------------------------------------------------------------------------------
class RecordingGrid(InlineGrid):
    """An in-process grid that keeps the replies to training messages."""

    def __init__(self, num_nodes: int) -> None:
        super().__init__(num_nodes)
        self.train_replies = []

    def send_and_receive(self, messages, timeout=None):
        messages = list(messages)
        replies = super().send_and_receive(messages, timeout)
        if messages and messages[0].metadata.message_type == MessageType.TRAIN:
            self.train_replies.extend(replies)
        return replies


def test_a_strategy_of_its_own_averages_with_equal_weights(plugin_dir, flower_identity):
    from fedmm.server.loop import run_federation
    from fedmm.server.plan import prepare

    run = config(
        "ext_uniform", *SYN, "partition=dirichlet", "num-clients=4", "strategy=uniform-fedavg", "selection=all"
    )
    plan = prepare(run)
    grid = RecordingGrid(len(plan.scenario.partitions))
    initial = {k: v.detach().clone().numpy() for k, v in plan.model.state_dict().items()}
    run_federation(grid, plan)
    sent = [from_record(r.content[ARRAYS]) for r in grid.train_replies]
    sizes = [int(metrics_of(r)[NUM_EXAMPLES]) for r in grid.train_replies]
    assert len(sent) == 4 and len(set(sizes)) > 1
    final = {k: v.detach().numpy() for k, v in plan.model.state_dict().items()}
    fusion = [k for k in initial if k.startswith("fusion.") and np.issubdtype(initial[k].dtype, np.floating)]
    assert fusion
    differs = False
    for k in fusion:  # every client trains the shared fusion group
        by_hand = sum(a[k].astype(np.float64) for a in sent) / len(sent)
        weighted = sum(n * a[k].astype(np.float64) for n, a in zip(sizes, sent, strict=True)) / sum(sizes)
        np.testing.assert_allclose(final[k], by_hand, rtol=1e-5, atol=1e-6)
        differs = differs or not np.allclose(by_hand, weighted, rtol=1e-5, atol=1e-6)
    assert differs  # weighting by examples would give another model


# -- an aggregation rule through the combine hook ------------------------------------------------------
def test_fedmedian_combine_by_hand(plugin_dir):
    config("ext_fedmedian")
    from ext_fedmedian import FedMedian

    from fedmm.strategies.replies import Accepted

    strategy = FedMedian.__new__(FedMedian)
    old = {"a": np.zeros(2, np.float32), "b": np.ones(1, np.float32)}
    accepted = [
        Accepted(
            client_id=c, modalities=("x",), num_examples=n, loss=0.0, arrays={"a": np.array(v, np.float32)}, facts={}
        )
        for c, n, v in [(0, 100, [1.0, 5.0]), (1, 1, [2.0, -1.0]), (2, 1, [9.0, 0.0])]
    ]
    new = strategy.combine(old, accepted)
    # the median per coordinate, whatever the weights: [2, 0]; "b" was sent by nobody and stays
    assert new["a"].tolist() == [2.0, 0.0] and new["b"].tolist() == [1.0]


def test_a_federation_with_fedmedian_records_its_metric(plugin_dir, flower_identity, tmp_path):
    run = config("ext_fedmedian", *SYN, "strategy=fedmedian")
    simulate_in_process(run, tmp_path / "run")
    rounds = pd.read_csv(tmp_path / "run" / "rounds.csv")
    # what aggregate_train returns (here round_metrics) reaches rounds.csv; selection=all: 6 clients
    assert rounds["median-clients"].tolist()[-1] == 6.0


def test_every_command_loads_plugins_with_the_plugins_option(plugin_dir, capsys):
    """``fedmm --plugins MODULE <command>``: the plugin's objective, dataset and prepare command are
    there for config, datasets and prepare; a module that cannot be imported is one error naming it."""
    from fedmm.cli import main

    assert main(["--plugins", "ext_objective", "config", "objective", "label-smoothing"]) == 0
    assert "objective.smoothing" in capsys.readouterr().out
    assert main(["--plugins", "ext_dataset", "datasets"]) == 0
    assert "blobs" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(["--plugins", "ext_dataset", "prepare", "blobs", "--help"])
    assert done.value.code == 0 and "--out" in capsys.readouterr().out
    assert main(["--plugins", "no_such_module_xyz", "datasets"]) == 2
    err = capsys.readouterr().err
    assert "--plugins" in err and "no_such_module_xyz" in err and "Traceback" not in err
