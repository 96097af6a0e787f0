"""Benchmark grids: skipping finished runs, the selection table, and one real selection benchmark."""

import pandas as pd
import pytest

from fedmm.bench import Case, run_grid, selection_table


def test_run_grid_skips_runs_already_in_the_csv(tmp_path, monkeypatch):
    calls = []

    def fake_simulate(run, out, overwrite=False):
        calls.append((run.selection, run.seed))
        return {
            "final": {"test/acc": 0.5 + run.seed / 10},
            "best-test/acc": 0.9,
            "best-round": 1,
            "total-bytes-up": 1.0,
            "total-seconds": 2.0,
            "loss-growth": 1.0,
            "diverged": False,
        }

    monkeypatch.setattr("fedmm.simulation.simulate", fake_simulate)
    cases = [Case({"policy": p}, (f"selection={p}",)) for p in ("random", "divfl")]
    csv = tmp_path / "grid.csv"
    df = run_grid(None, ["dataset=synthetic"], cases, [0, 1], csv)
    assert calls == [("random", 0), ("random", 1), ("divfl", 0), ("divfl", 1)]
    assert df["test/acc"].tolist() == pytest.approx([0.5, 0.6, 0.5, 0.6])
    calls.clear()
    df = run_grid(None, ["dataset=synthetic"], cases, [0, 1, 2], csv)
    assert calls == [("random", 2), ("divfl", 2)] and len(df) == 6  # only the new seed runs
    with pytest.raises(ValueError, match="num-server-rounds"):  # a bad case fails before any run
        run_grid(None, ["num-server-rounds=0"], cases, [0], tmp_path / "other.csv")
    assert calls == [("random", 2), ("divfl", 2)]


def test_selection_table_by_hand():
    rows = []
    for policy, accs in (("a", [0.0, 0.5, 0.9]), ("b", [0.0, 0.8, 0.8])):
        for seed in (0, 1):
            for r, acc in enumerate(accs):
                rows.append(
                    {
                        "policy": policy,
                        "seed": seed,
                        "round": r,
                        "test/acc": acc,
                        "test/acc/x": 0.7,
                        "test/acc/y": 0.2 + seed * 0.1,
                        "bytes-up": 1e6 * r,
                        "selection-seconds": 0.001,
                    }
                )
    table = selection_table(pd.DataFrame(rows), ["a", "b"])
    lines = table.splitlines()
    assert "y alone" in lines[0] and "rounds to 0.855" in lines[0]  # 0.95 x the best final (0.9)
    assert lines[2] == "| a | 0.900 ± 0.000 | 0.900 ± 0.000 | 0.250 ± 0.071 | 2.0 | 3.0 ± 0.0 | 1.00 ± 0.00 |"
    assert lines[3].startswith("| b | 0.800 ± 0.000 | 0.800 ± 0.000 |") and "| never |" in lines[3]
    assert lines[0].startswith("| policy | final acc | best acc (oracle: round chosen on test) |")  # no val/acc


def test_the_selection_table_reports_the_test_accuracy_of_the_round_chosen_on_validation():
    # seed 0: validation peaks in round 1 (test 0.6) while test peaks in round 2; seed 1: ties in
    # rounds 2 and 3 go to the earlier (test 0.7); round 0 (the untrained model) is never chosen
    curves = {
        0: [(0.9, 0.1), (0.6, 0.8), (0.95, 0.7), (0.5, 0.2)],
        1: [(0.9, 0.9), (0.4, 0.1), (0.7, 0.5), (0.8, 0.5)],
    }
    rows = [
        {
            "policy": "a",
            "seed": seed,
            "round": r,
            "test/acc": test,
            "val/acc": val,
            "test/acc/x": 0.5,
            "bytes-up": 0.0,
            "selection-seconds": 0.0,
        }
        for seed, curve in curves.items()
        for r, (test, val) in enumerate(curve)
    ]
    lines = selection_table(pd.DataFrame(rows), ["a"]).splitlines()
    assert lines[0].startswith("| policy | final acc | test acc at best-val round | x alone (final) |")
    assert lines[2].startswith("| a | 0.650 ± 0.212 | 0.650 ± 0.071 |")  # (0.6 + 0.7) / 2


@pytest.mark.integration
@pytest.mark.slow  # over a minute on 2 cores: `make test-slow`
def test_selection_benchmark_end_to_end(tmp_path):
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
            "num-clients=4",
            "--set",
            "clients-per-round=2",
            "--set",
            "num-server-rounds=2",
            "--set",
            "local-epochs=1",
            "--policies",
            "random,cmsfed",
            "--seeds",
            "0",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    curves = pd.read_csv(tmp_path / "selection.csv")
    assert set(curves["policy"]) == {"random", "cmsfed"} and curves["round"].max() == 2
    assert (tmp_path / "selection.png").is_file()
    table = (tmp_path / "selection.md").read_text()
    assert "| random |" in table and "| cmsfed |" in table
    assert main(["bench", "selection", "--policies", "nope", "--out", str(tmp_path / "x")]) == 2
    assert main(["bench", "selection", "--protocol", "best", "--out", str(tmp_path / "y")]) == 2
