"""Checkpoints after every round; an interrupted and resumed run ends like an uninterrupted one."""

import json

import numpy as np
import pandas as pd
import pytest

from fedmm.checkpoint import CHECKPOINT_ARRAYS, CHECKPOINT_STATE, Checkpoint, load_checkpoint, save_checkpoint
from fedmm.config import load_config
from fedmm.results import CLIENTS_FILE, ROUNDS_FILE, SUMMARY_FILE


def test_checkpoint_round_trip_and_consistency_check(tmp_path):
    state = {"a": np.arange(3, dtype=np.uint64), "b": "text", "c": 2.5, "d": np.float32(1.5)}
    save_checkpoint(tmp_path, Checkpoint(4, {"fusion.w": np.ones((2, 2), np.float32)}, state))
    back = load_checkpoint(tmp_path)
    assert back.server_round == 4 and back.state["b"] == "text" and back.state["d"] == 1.5
    np.testing.assert_array_equal(back.state["a"], state["a"])
    np.testing.assert_array_equal(back.model["fusion.w"], np.ones((2, 2)))
    saved = json.loads((tmp_path / CHECKPOINT_STATE).read_text())
    (tmp_path / CHECKPOINT_STATE).write_text(json.dumps({**saved, "round": 5}))  # a crash between the writes
    with pytest.raises(ValueError, match="inconsistent"):
        load_checkpoint(tmp_path)
    (tmp_path / CHECKPOINT_ARRAYS).unlink()
    with pytest.raises(ValueError, match="no checkpoint"):
        load_checkpoint(tmp_path)


class Interrupt(Exception):
    pass


@pytest.mark.integration
@pytest.mark.slow  # over a minute on 2 cores: `make test-slow`
def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(tmp_path):
    from fedmm.cli import main
    from fedmm.simulation import simulate

    run = load_config(
        None,
        [
            "dataset=synthetic",
            "partition=iid",
            "num-clients=4",
            "allocation=multi-ratio",
            "multi-ratio=0.5",
            "strategy=cmsfed",
            "clients-per-round=2",
            "num-server-rounds=3",
            "local-epochs=1",
            "batch-size=16",
            "device=cpu",
            "seed=3",
        ],
    )
    whole = simulate(run, tmp_path / "whole")

    def stop_after_round_1(row):
        if row["round"] == 1:
            raise Interrupt("stopped on purpose")

    with pytest.raises(Exception):  # noqa: B017 - whatever the simulation engine turns the interrupt into
        simulate(run, tmp_path / "split", on_round=stop_after_round_1)
    interrupted = json.loads((tmp_path / "split" / SUMMARY_FILE).read_text())
    assert interrupted["status"] == "interrupted" and "stopped on purpose" in interrupted["reason"]
    assert load_checkpoint(tmp_path / "split").server_round == 1

    assert main(["simulate", "--resume", str(tmp_path / "split"), "--quiet"]) == 0
    resumed = json.loads((tmp_path / "split" / SUMMARY_FILE).read_text())
    assert resumed["status"] == "completed" and resumed["rounds"] == 3
    for key, value in whole["final"].items():
        assert resumed["final"][key] == pytest.approx(value, abs=1e-9), key
    rounds = pd.read_csv(tmp_path / "split" / ROUNDS_FILE)
    assert rounds["round"].tolist() == [0, 1, 2, 3]
    a = pd.read_csv(tmp_path / "whole" / CLIENTS_FILE)
    b = pd.read_csv(tmp_path / "split" / CLIENTS_FILE)
    cols = ["round", "partition-id", "modalities-trained", "status", "num-examples"]
    pd.testing.assert_frame_equal(a[cols], b[cols])  # the same selections, with the same modalities
    assert main(["simulate", "--resume", str(tmp_path / "split")]) == 2  # completed: nothing to resume


def test_a_run_written_with_a_moved_config_key_is_refused_naming_the_new_key(tmp_path):
    from fedmm.server.resume import resume_config

    run_dir = tmp_path / "old-run"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text('dataset = "synthetic"\nstrategy = "fedprox"\nproximal-mu = 0.05\n')
    with pytest.raises(ValueError, match=r"older fedmm: .*'proximal-mu', now 'strategy.mu .*start it over"):
        resume_config(run_dir)
