"""Experiment tracking (fedmm.tracking): what a small inline run logged, read back with each
library's own reader (TensorBoard's EventAccumulator, MLflow's MlflowClient); off by default with
the same numbers and the same config text."""

from __future__ import annotations

import sys

import pandas as pd
import pytest

from fedmm.config import load_config
from fedmm.tracking import flat_params, round_metrics

BASE = [
    "dataset=synthetic",
    "partition=iid",
    "num-clients=4",
    "num-server-rounds=2",
    "local-epochs=1",
    "engine=inline",
    "selection=random",
    "clients-per-round=2",
]


def simulate(out, *sets):
    from fedmm.simulation import simulate as run_simulation

    return run_simulation(load_config(None, [*BASE, *sets]), out)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One run with both trackers on, and the same run with them off."""
    root = tmp_path_factory.mktemp("tracking")
    simulate(root / "on", "tensorboard=true", "mlflow=true")
    simulate(root / "off")
    return root


def test_round_metrics_are_the_finite_numbers_of_the_row_and_the_trained_modalities():
    row = {"round": 2, "test/acc": 0.5, "test/acc/a": 0.25, "train/loss": float("nan"), "note": "x", "flag": True}
    clients = [
        {"round": 2, "modalities-trained": "a+b", "status": "ok"},
        {"round": 2, "modalities-trained": "a", "status": "ok"},
        {"round": 2, "modalities-trained": "b", "status": "rejected: bad"},
        {"round": 0, "modalities-trained": "a+b", "status": "ok"},  # the update pass: not round 2's
    ]
    assert round_metrics(row, clients) == {
        "test/acc": 0.5,
        "test/acc/a": 0.25,
        "clients/trained/a": 2.0,
        "clients/trained/b": 1.0,
    }


def test_tracking_is_off_by_default_same_numbers_and_same_config_text(tracked):
    run = load_config(None, BASE)
    assert not run.tensorboard and not run.mlflow
    text = run.to_toml()
    assert "tensorboard" not in text and "mlflow" not in text  # the config text of runs before tracking existed
    assert "tensorboard = true" in load_config(None, [*BASE, "tensorboard=true"]).to_toml()
    off, on = (pd.read_csv(tracked / d / "rounds.csv") for d in ("off", "on"))
    same = [c for c in off.columns if "seconds" not in c]
    pd.testing.assert_frame_equal(on[same], off[same])
    assert not (tracked / "off" / "tensorboard").exists() and not (tracked / "off" / "mlflow.db").exists()
    with pytest.raises(ValueError, match="'mlflow-uri'.*needs mlflow = true"):
        load_config(None, [*BASE, "mlflow-uri=sqlite:///x.db"])


def test_tensorboard_events_read_back(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rounds = pd.read_csv(tracked / "on" / "rounds.csv")
    events = EventAccumulator(
        str(tracked / "on" / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0}
    )
    events.Reload()
    tags = events.Tags()
    for column in ("test/acc", "test/acc/m0", "test/acc/m1", "test/loss", "bytes-up"):
        logged = events.Scalars(column)
        assert [e.step for e in logged] == rounds["round"].tolist()
        assert [e.value for e in logged] == pytest.approx(rounds[column].tolist(), rel=1e-6)
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]  # round 0 has none (NaN)
    assert "clients/trained/m0" in tags["scalars"] or "clients/trained/m1" in tags["scalars"]
    assert {"plots/accuracy", "plots/selection"} <= set(tags["images"])
    assert "config/text_summary" in tags["tensors"] and "summary/text_summary" in tags["tensors"]
    config_text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert 'dataset = "synthetic"' in config_text and "tensorboard = true" in config_text


def test_mlflow_run_read_back(tracked):
    from mlflow import MlflowClient

    out = tracked / "on"
    rounds = pd.read_csv(out / "rounds.csv")
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fedmm")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "on"
    params = run.data.params
    assert params["dataset"] == "synthetic" and params["selection"] == "random" and params["num-clients"] == "4"
    assert params["mlflow"] == "True"
    for column in ("test/acc", "test/acc/m0", "test/acc/m1", "test/imbalance"):
        history = sorted(client.get_metric_history(run.info.run_id, column), key=lambda m: m.step)
        assert [m.step for m in history] == rounds["round"].tolist()
        assert [m.value for m in history] == pytest.approx(rounds[column].tolist())
    assert run.data.metrics["summary/last-rounds-test/acc"] == pytest.approx(rounds["test/acc"][1:].mean())
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"plots", "summary.json", "config.toml"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} == {
        "plots/accuracy.png",
        "plots/selection.png",
    }


def test_resumed_run_logs_to_the_same_mlflow_run(tmp_path):
    from mlflow import MlflowClient

    from fedmm.tracking.mlflow_tracker import MlflowTracker

    run = load_config(None, [*BASE, "mlflow=true"])
    first = MlflowTracker(tmp_path, run)
    first.log_round({"round": 0, "test/acc": 0.1})
    first.close("interrupted")
    again = MlflowTracker(tmp_path, run, resume_after=0)
    assert again.run_id == first.run_id
    again.log_round({"round": 1, "test/acc": 0.4})
    again.finish({"rounds": 1}, [], tmp_path)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert [m.value for m in client.get_metric_history(first.run_id, "test/acc")] == [0.1, 0.4]
    assert client.get_run(first.run_id).info.status == "FINISHED"


def test_a_missing_tracking_package_is_one_message(tmp_path, monkeypatch):
    from fedmm.tracking import open_trackers

    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now raises ImportError
    with pytest.raises(ImportError, match=r"config key 'mlflow' = true needs the mlflow package.*fedmm\[tracking\]"):
        open_trackers(tmp_path, load_config(None, [*BASE, "mlflow=true"]))


def test_flat_params_include_every_key():
    params = flat_params(load_config(None, BASE))
    assert params["tensorboard"] == "False" and params["mlflow-experiment"] == "fedmm"
    assert params["num-server-rounds"] == "2"
