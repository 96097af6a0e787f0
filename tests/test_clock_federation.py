"""The simulated clock in a federation (inline engine): deadline, over-commitment, availability
filtering for every policy, and resume."""

import numpy as np
import pandas as pd
import pytest
from inprocess import simulate_in_process
from safetensors.numpy import load_file

from fedmm.checkpoint import load_checkpoint
from fedmm.config import load_config
from fedmm.results import CLIENTS_FILE, MODEL_FILE, ROUNDS_FILE
from fedmm.strategies.selection import policy_names
from fedmm.workspace import model_of, objective_of, scenario_of

BASE = [
    "dataset=synthetic",
    "partition=iid",
    "num-clients=8",
    "allocation=multi-ratio",
    "multi-ratio=0.5",
    "local-epochs=1",
    "batch-size=16",
    "device=cpu",
    "seed=3",
    "engine=inline",
]
HEADER = "client,compute_ms_per_sample,down_kbps,up_kbps"


def trace(tmp_path, rows, name="trace.csv", intervals=False):
    path = tmp_path / name
    path.write_text(HEADER + (",online_start_s,online_end_s" if intervals else "") + "\n" + "\n".join(rows) + "\n")
    return path


def config(*extra):
    return load_config(None, [*BASE, *extra])


def test_a_deadline_drops_exactly_the_late_clients_and_does_not_aggregate_them(tmp_path, flower_identity):
    # every multimodal client is slow (1 s per sample: 75 s of training), every unimodal one fast
    split = ["allocation=fractions", "modality-fractions=m0=0.5,m0+m1=0.5"]  # only multimodal clients hold m1
    probe = config("selection=all", "num-server-rounds=1", *split)
    held = scenario_of(probe).modalities
    multi = {p for p, mods in enumerate(held) if len(mods) > 1}
    assert multi and len(multi) < len(held)
    rows = [f"{p},{1000.0 if p in multi else 1.0},1000000,1000000" for p in range(len(held))]
    run = config(
        "selection=all",
        "num-server-rounds=1",
        f"devices={trace(tmp_path, rows)}",
        "round-close=deadline",
        "round-deadline=10",
        *split,
    )
    simulate_in_process(run, tmp_path / "run")
    clients = pd.read_csv(tmp_path / "run" / CLIENTS_FILE)
    late = set(clients.loc[clients["status"] == "late", "partition-id"])
    assert late == multi
    assert set(clients.loc[clients["status"] == "ok", "partition-id"]) == set(range(len(held))) - multi
    assert (clients.loc[clients["status"] == "late", "bytes-up"] == 0).all()
    sim = clients[["sim-download", "sim-train", "sim-upload"]].sum(axis=1)
    assert (sim[clients["status"] == "late"] > 10).all() and (sim[clients["status"] == "ok"] <= 10).all()
    rounds = pd.read_csv(tmp_path / "run" / ROUNDS_FILE)
    assert rounds["sim-seconds"].tolist() == [0.0, 10.0] and rounds["sim-clock"].tolist() == [0.0, 10.0]
    # not aggregated: only the (late) multimodal clients hold m1, so m1's encoder did not move, m0's did
    assert not any("m1" in held[p] for p in set(range(len(held))) - multi)
    final = load_file(str(tmp_path / "run" / MODEL_FILE))
    initial = model_of(run, objective_of(run)).state_dict()
    m1 = [k for k in final if k.startswith("encoders.m1.")]
    m0 = [k for k in final if k.startswith("encoders.m0.") and k.endswith("weight")]
    assert m1 and all(np.array_equal(final[k], initial[k].numpy()) for k in m1)
    assert not all(np.array_equal(final[k], initial[k].numpy()) for k in m0)


def test_overcommitment_keeps_the_first_k_to_finish(tmp_path, flower_identity):
    run = config(
        "selection=random",
        "clients-per-round=2",
        "num-server-rounds=3",
        "devices=model",
        "round-close=overcommit",
        "overcommit=1.0",
    )
    simulate_in_process(run, tmp_path / "run")
    clients = pd.read_csv(tmp_path / "run" / CLIENTS_FILE)
    rounds = pd.read_csv(tmp_path / "run" / ROUNDS_FILE)
    clients["sim"] = clients[["sim-download", "sim-train", "sim-upload"]].sum(axis=1)
    for r, group in clients.groupby("round"):
        assert len(group) == 4  # K (1 + x) selected
        ok = group[group["status"] == "ok"]
        assert len(ok) == 2 and set(group["status"]) == {"ok", "late"}
        assert ok["sim"].max() <= group.loc[group["status"] == "late", "sim"].min()  # the two fastest
        assert rounds.loc[rounds["round"] == r, "sim-seconds"].item() == pytest.approx(ok["sim"].max())
    assert rounds["sim-clock"].iloc[-1] == pytest.approx(rounds["sim-seconds"].sum())


@pytest.mark.parametrize("policy", policy_names())
def test_no_policy_selects_an_offline_client(tmp_path, flower_identity, policy):
    # clients 0-3 always online, 4-7 offline until 100000 s of the 200000 s period
    rows = [f"{p},1,100000,100000,0,200000" if p < 4 else f"{p},1,100000,100000,100000,200000" for p in range(8)]
    path = trace(tmp_path, rows, intervals=True)
    strategy = "cmsfed" if policy == "cmsfed" else "fedavg"
    run = config(
        f"selection={policy}",
        f"strategy={strategy}",
        "clients-per-round=3",
        "num-server-rounds=2",
        f"devices={path}",
        "devices.period-s=200000",
    )
    simulate_in_process(run, tmp_path / "run")
    clients = pd.read_csv(tmp_path / "run" / CLIENTS_FILE)
    trained = clients[clients["round"] >= 1]
    assert len(trained) and set(trained["partition-id"]) <= {0, 1, 2, 3}, policy
    assert (trained["status"] == "ok").all()


def test_a_client_that_goes_offline_before_it_finishes_is_dropped(tmp_path, flower_identity):
    # client p is online for the first p + 1 seconds of the period; 100 ms per sample of the full model
    rows = [f"{p},100,1000000,1000000,0,{p + 1}" for p in range(8)]
    run = config(
        "selection=all",
        "num-server-rounds=1",
        f"devices={trace(tmp_path, rows, intervals=True)}",
        "devices.period-s=100000",
    )
    simulate_in_process(run, tmp_path / "run")
    clients = pd.read_csv(tmp_path / "run" / CLIENTS_FILE)
    status = dict(zip(clients["partition-id"], clients["status"]))
    need = dict(zip(clients["partition-id"], clients[["sim-download", "sim-train", "sim-upload"]].sum(axis=1)))
    assert all(status[p] == ("dropped" if need[p] > p + 1 else "ok") for p in status)
    assert "dropped" in status.values() and "ok" in status.values()
    assert (clients.loc[clients["status"] == "dropped", "num-examples"] == 0).all()


def test_resume_keeps_the_clock_and_the_profiles(tmp_path, flower_identity):
    class Stop(Exception):
        pass

    rows = [f"{p},{5 + p},{800 * (p + 1)},{400 * (p + 1)},{p * 100},{p * 100 + 5000}" for p in range(8)]
    path = trace(tmp_path, rows, intervals=True)
    run = config(
        "selection=random",
        "clients-per-round=3",
        "num-server-rounds=3",
        f"devices={path}",
        "devices.period-s=6000",
        "round-close=deadline",
        "round-deadline=30",
    )
    simulate_in_process(run, tmp_path / "whole")

    def stop_after_1(row):
        if row["round"] == 1:
            raise Stop

    with pytest.raises(Stop):
        simulate_in_process(run, tmp_path / "split", on_round=stop_after_1)
    checkpoint = load_checkpoint(tmp_path / "split")
    assert checkpoint.state["strategy-state.clock.seconds"] > 0
    simulate_in_process(run, tmp_path / "split", resume=checkpoint)
    for name in (ROUNDS_FILE, CLIENTS_FILE):
        a, b = pd.read_csv(tmp_path / "whole" / name), pd.read_csv(tmp_path / "split" / name)
        cols = [c for c in a.columns if c.startswith("sim-") or c in ("round", "partition-id", "status")]
        pd.testing.assert_frame_equal(a[cols], b[cols])
    # a trace that changed under a stopped run is refused when it resumes
    path.write_text(path.read_text().replace("\n0,5,", "\n0,6,"))
    with pytest.raises(ValueError, match="device profiles .* differ from the checkpoint's"):
        simulate_in_process(run, tmp_path / "split", resume=checkpoint)
