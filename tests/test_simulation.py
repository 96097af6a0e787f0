"""One real Ray simulation, end to end, plus the guarantee that bad input writes nothing."""

import json
import math

import pandas as pd
import pytest

from fedmm.config import load_config
from fedmm.results import CLIENTS_FILE, CONFIG_FILE, MODEL_FILE, PLOT_FILE, ROUNDS_FILE, SUMMARY_FILE

pytestmark = pytest.mark.integration


def test_two_round_ray_simulation_writes_every_result_file(tmp_path):
    from fedmm.simulation import simulate

    overrides = [
        "dataset=synthetic",
        "partition=iid",
        "num-clients=6",
        "allocation=multi-ratio",
        "multi-ratio=0.5",
        "num-server-rounds=2",
        "selection=random",
        "clients-per-round=4",
        "local-epochs=1",
        "batch-size=16",
        "client-num-cpus=1",
        "device=cpu",
    ]
    run = load_config(None, overrides)
    rows = []
    summary = simulate(run, tmp_path / "run", on_round=rows.append)

    out = tmp_path / "run"
    for name in (ROUNDS_FILE, CLIENTS_FILE, CONFIG_FILE, SUMMARY_FILE, MODEL_FILE, PLOT_FILE):
        assert (out / name).is_file(), name
    rounds = pd.read_csv(out / ROUNDS_FILE)
    assert rounds["round"].tolist() == [0, 1, 2]
    for col in ("test/acc", "test/f1", "test/acc/m0", "test/acc/m1", "train/loss", "bytes-up", "bytes-down", "seconds"):
        assert col in rounds.columns, col
    assert rounds["bytes-up"].iloc[1:].gt(0).all() and rounds["bytes-down"].iloc[1:].gt(0).all()
    assert not math.isnan(rounds["train/loss"].iloc[-1])
    # synthetic data is easy: two rounds already beat chance (0.25) clearly
    assert rounds["test/acc"].iloc[-1] > 0.5

    clients = pd.read_csv(out / CLIENTS_FILE)
    assert len(clients) == 2 * 4 and (clients["status"] == "ok").all()
    # unimodal clients upload less than multimodal ones: only their encoder and the fusion head
    by_mods = clients.groupby("modalities-trained")["bytes-up"].max()
    assert by_mods["m0"] < by_mods["m0+m1"] and by_mods["m1"] < by_mods["m0+m1"]

    saved = json.loads((out / SUMMARY_FILE).read_text())
    assert saved["status"] == "completed" and saved["rounds"] == 2
    assert saved["final"]["test/acc"] == pytest.approx(summary["final"]["test/acc"])
    assert [r["round"] for r in rows] == [0, 1, 2]

    from safetensors.torch import load_file

    weights = load_file(out / MODEL_FILE)
    assert any(k.startswith("encoders.m0.") for k in weights) and "fusion.linear.weight" in weights

    # the inline engine runs the same federation to the same numbers, selections and bytes
    inline = tmp_path / "inline"
    simulate(load_config(None, [*overrides, "engine=inline"]), inline)
    same = [c for c in rounds.columns if c not in ("seconds", "selection-seconds")]
    pd.testing.assert_frame_equal(pd.read_csv(inline / ROUNDS_FILE)[same], rounds[same])
    cols = [c for c in clients.columns if c not in ("seconds", "node-id")]  # Ray draws its own node ids
    pd.testing.assert_frame_equal(pd.read_csv(inline / CLIENTS_FILE)[cols], clients[cols])


def test_bad_input_fails_before_any_file_is_written(tmp_path):
    from fedmm.cli import main

    out = tmp_path / "never"
    code = main(
        [
            "simulate",
            "--set",
            "dataset=synthetic",
            "--set",
            "partition=iid",
            "--set",
            "num-clients=4",
            "--set",
            "objective=nope",
            "--out",
            str(out),
        ]
    )
    assert code == 2
    assert not out.exists()
    code = main(["simulate", "--set", "dataset=synthetic", "--set", "partition=natural", "--out", str(out)])
    assert code == 2 and not out.exists()


@pytest.mark.slow  # over a minute on 2 cores: `make test-slow`
def test_fedcmi_simulation_with_unimodal_and_multimodal_clients(tmp_path):
    from fedmm.simulation import simulate

    run = load_config(
        None,
        [
            "dataset=synthetic",
            "partition=iid",
            "num-clients=4",
            "allocation=multi-ratio",
            "multi-ratio=0.5",
            "strategy=fedcmi",
            "num-server-rounds=2",
            "local-epochs=1",
            "batch-size=16",
            "device=cpu",
            "objective.proximal=true",
            "objective.mu=0.1",
        ],
    )
    assert run.objective == "fedcmi"
    summary = simulate(run, tmp_path / "run")
    rounds = pd.read_csv(tmp_path / "run" / ROUNDS_FILE)
    assert {"test/acc-fill/m0", "test/acc-fill/m1"} <= set(rounds.columns)
    assert rounds["test/acc"].iloc[-1] > 0.5 and summary["status"] == "completed"
    clients = pd.read_csv(tmp_path / "run" / CLIENTS_FILE)
    assert set(clients["modalities-trained"]) == {"m0", "m1", "m0+m1"} and (clients["status"] == "ok").all()


def test_cmsfed_simulation_runs_the_update_pass_and_selects_modalities(tmp_path):
    from fedmm.simulation import simulate

    run = load_config(
        None,
        [
            "dataset=synthetic",
            "partition=iid",
            "num-clients=6",
            "allocation=multi-ratio",
            "multi-ratio=0.5",
            "strategy=cmsfed",
            "clients-per-round=3",
            "num-server-rounds=2",
            "local-epochs=1",
            "batch-size=16",
            "device=cpu",
            "selection.delta=1.0",
        ],
    )
    assert (run.objective, run.selection) == ("cmsfed", "cmsfed")
    summary = simulate(run, tmp_path / "run")
    assert summary["status"] == "completed"
    clients = pd.read_csv(tmp_path / "run" / CLIENTS_FILE)
    update_pass = clients[clients["round"] == 0]
    assert len(update_pass) == 6 and (update_pass["status"] == "ok").all()  # every client, before round 1
    assert (update_pass["modalities-trained"] == update_pass["modalities-held"]).all()
    for r in (1, 2):
        assert len(clients[clients["round"] == r]) == 3
    rounds = pd.read_csv(tmp_path / "run" / ROUNDS_FILE)
    assert rounds["clients-ok"].tolist()[1:] == [3, 3] and rounds["test/acc"].iloc[-1] > 0.4
