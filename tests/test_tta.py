"""Time-to-accuracy and participation by modality combination (fedmm.tta) and their columns in the
selection table, on hand-made result frames."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from fedmm.bench import selection_table
from fedmm.tta import accuracy_column, multimodal_share, participation, time_to_target


def test_participation_counts_selected_and_trained_per_combination() -> None:
    clients = pd.DataFrame(
        [
            {"round": 0, "modalities-held": "m0+m1", "status": "ok"},  # the update pass: left out
            {"round": 1, "modalities-held": "m0+m1", "status": "ok"},
            {"round": 1, "modalities-held": "m0+m1", "status": "late"},
            {"round": 1, "modalities-held": "m0", "status": "ok"},
            {"round": 2, "modalities-held": "m0", "status": "dropped"},
            {"round": 2, "modalities-held": "m0", "status": "ok"},
        ]
    )
    got = participation(clients)
    assert got.to_dict("records") == [
        {"round": 1, "modalities-held": "m0", "selected": 1, "trained": 1},
        {"round": 1, "modalities-held": "m0+m1", "selected": 2, "trained": 1},
        {"round": 2, "modalities-held": "m0", "selected": 2, "trained": 1},
    ]
    assert multimodal_share(got) == {"selected": 2 / 5, "trained": 1 / 3}


def test_time_to_target_reads_the_first_round_that_reaches_it() -> None:
    run = pd.DataFrame(
        {
            "round": [0, 1, 2, 3],
            "test/acc": [0.9, 0.4, 0.7, 0.8],
            "mb-up": [0.0, 1.0, 2.5, 4.0],
            "sim-clock": [0.0, 3600.0, 9000.0, 10800.0],
        }
    )
    assert time_to_target(run, 0.7, "test/acc") == {"round": 2.0, "minutes": 150.0, "mb": 2.5}  # round 0 does not count
    assert all(math.isnan(v) for v in time_to_target(run, 0.95, "test/acc").values())
    assert math.isnan(time_to_target(run.drop(columns="sim-clock"), 0.7, "test/acc")["minutes"])


def test_validation_accuracy_is_preferred() -> None:
    assert accuracy_column(pd.DataFrame({"test/acc": [0.1]})) == "test/acc"
    assert accuracy_column(pd.DataFrame({"test/acc": [0.1], "val/acc": [0.2]})) == "val/acc"
    with pytest.raises(ValueError, match="no accuracy column"):
        accuracy_column(pd.DataFrame({"round": [1]}))


def test_selection_table_with_clock_and_participation() -> None:
    rows = []
    # policy a: reaches 0.855 (0.95 x 0.9) in round 2 after 2 h = 120 min (seed 0) or 4 h (seed 1); b never
    for policy, accs, hours in (("a", [0.0, 0.5, 0.9], (1.0, 2.0)), ("b", [0.0, 0.8, 0.8], (0.5, 0.5))):
        for seed in (0, 1):
            for r, acc in enumerate(accs):
                rows.append(
                    {
                        "policy": policy,
                        "seed": seed,
                        "round": r,
                        "test/acc": acc,
                        "test/acc/x": 0.7,
                        "test/acc/y": 0.2,
                        "bytes-up": 1e6 * r,
                        "selection-seconds": 0.001,
                        "sim-clock": 3600.0 * hours[0] * (1 + seed) * r,
                    }
                )
    curves = pd.DataFrame(rows)
    curves["mb-up"] = curves.groupby(["policy", "seed"])["bytes-up"].cumsum() / 1e6
    part = pd.DataFrame(
        [
            {"policy": "a", "seed": 0, "round": 1, "modalities-held": "x+y", "selected": 1, "trained": 1},
            {"policy": "a", "seed": 0, "round": 1, "modalities-held": "x", "selected": 3, "trained": 1},
            {"policy": "b", "seed": 0, "round": 1, "modalities-held": "x", "selected": 2, "trained": 2},
        ]
    )
    lines = selection_table(curves, ["a", "b"], part).splitlines()
    assert "sim minutes to target" in lines[0] and "MB to target" in lines[0]
    assert lines[2] == (
        "| a | 0.900 ± 0.000 | 0.900 ± 0.000 | 0.200 ± 0.000 | 2.0 | 180.00 | 3.0 | 180.00 ± 84.85 | "
        "3.0 ± 0.0 | 1.00 ± 0.00 | 0.25 / 0.50 |"
    )
    assert lines[3].startswith("| b |") and lines[3].count("never") == 3 and lines[3].endswith("| 0.00 / 0.00 |")


@pytest.mark.integration
def test_bench_selection_on_the_clock_end_to_end(tmp_path) -> None:
    from fedmm.cli import main

    code = main(
        [
            "bench",
            "selection",
            "--set",
            "dataset=synthetic",
            "--set",
            "partition=iid",
            "--set",
            "num-clients=6",
            "--set",
            "clients-per-round=2",
            "--set",
            "num-server-rounds=2",
            "--set",
            "local-epochs=1",
            "--set",
            "engine=inline",
            "--set",
            "devices=model",
            "--policies",
            "random,oort",
            "--seeds",
            "0",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    curves = pd.read_csv(tmp_path / "selection.csv")
    for _, run in curves.groupby("policy"):
        assert run["sim-clock"].is_monotonic_increasing and run["sim-clock"].iloc[-1] > 0
    part = pd.read_csv(tmp_path / "participation.csv")
    assert (
        set(part["policy"]) == {"random", "oort"} and (part.groupby(["policy", "round"])["selected"].sum() == 2).all()
    )
    table = (tmp_path / "selection.md").read_text()
    assert "sim minutes to target" in table and "| oort |" in table
