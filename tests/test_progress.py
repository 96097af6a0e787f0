"""Progress where a run is watched without a terminal: one plain line per round (files, nohup, CI,
`flwr run --stream`), and `fedmm bench` names the run of the grid it is on."""

from __future__ import annotations

import io
import math
import re

from fedmm.progress import print_rounds, round_line, watch, weak_modality

ROW = {
    "round": 3,
    "test/acc": 0.91254,
    "test/acc/acc": 0.8049,
    "test/acc/gyro": 0.60312,
    "train/loss": 0.41204,
    "seconds": 4.236,
    "test/loss": 0.3,
}


def test_round_line_names_round_accuracy_weak_modality_loss_and_time() -> None:
    assert weak_modality(ROW) == ("gyro", 0.60312)
    assert round_line(ROW, 15) == "round  3/15  test/acc 0.9125  weak gyro 0.603  loss 0.4120  4.2 s"
    # round 0 (the initial model) has no training loss; a validation accuracy is shown when present
    first = {
        "round": 0,
        "test/acc": 0.1,
        "test/acc/m0": 0.2,
        "test/acc/m1": math.nan,
        "train/loss": math.nan,
        "seconds": 0.0,
        "val/acc": 0.25,
    }
    assert round_line(first, 5) == "round 0/5  test/acc 0.1000  val/acc 0.2500  weak m0 0.200  loss -  0.0 s"
    assert weak_modality({"round": 1, "test/acc": 0.5}) is None


def test_watch_prints_plain_lines_when_the_output_is_not_a_terminal() -> None:
    out = io.StringIO()  # not a terminal
    with watch(2, stream=out) as on_round:
        on_round({**ROW, "round": 1})
        assert out.getvalue().count("\n") == 1  # printed (and flushed) as the round ends, not at the end
        on_round({**ROW, "round": 2})
    assert out.getvalue().splitlines() == [round_line({**ROW, "round": 1}, 2), round_line({**ROW, "round": 2}, 2)]
    with watch(2, stream=out, enabled=False) as on_round:
        assert on_round is None


def test_every_round_of_a_cli_run_prints_a_line_when_stdout_is_a_file(tmp_path, capsys) -> None:
    from fedmm.cli import main

    assert (
        main(
            [
                "simulate",
                "--set",
                "dataset=synthetic",
                "--set",
                "partition=iid",
                "--set",
                "num-clients=4",
                "--set",
                "num-server-rounds=3",
                "--set",
                "local-epochs=1",
                "--set",
                "engine=inline",
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    rounds = [line for line in lines if line.startswith("round ")]
    assert [int(re.match(r"round (\d+)/3 ", line).group(1)) for line in rounds] == [0, 1, 2, 3]
    assert all(
        re.search(r"test/acc [01]\.\d{4}  val/acc [01]\.\d{4}  weak m\d [01]\.\d{3}  loss [\d.-]+  [\d.]+ s$", line)
        for line in rounds
    )


def test_the_server_app_prints_every_round_through_print_rounds(flower_identity, capsys) -> None:
    """The ServerApp (`flwr run`, deployment) prints each round: its callback is `print_rounds`."""
    import inspect

    from inprocess import run_in_process

    from fedmm.config import load_config
    from fedmm.server import app

    assert "print_rounds(run.num_server_rounds)" in inspect.getsource(app.main)
    run = load_config(
        None,
        ["dataset=synthetic", "partition=iid", "num-clients=3", "num-server-rounds=2", "local-epochs=1", "device=cpu"],
    )
    callback = print_rounds(run.num_server_rounds)
    run_in_process(run, lambda plan, row: callback(row))
    assert [line.split("  ")[0] for line in capsys.readouterr().out.splitlines()] == [
        "round 0/2",
        "round 1/2",
        "round 2/2",
    ]


def test_bench_names_each_run_of_the_grid_before_it_starts(tmp_path, flower_identity) -> None:
    from inprocess import simulate_in_process

    from fedmm.bench import Case, run_grid

    started: list[str] = []
    cases = [Case({"policy": p}, (f"selection={p}",)) for p in ("random", "all")]
    overrides = [
        "dataset=synthetic",
        "partition=iid",
        "num-clients=3",
        "num-server-rounds=1",
        "local-epochs=1",
        "clients-per-round=2",
        "device=cpu",
    ]
    run_grid(
        None, overrides, cases, [0, 1], tmp_path / "runs.csv", on_start=started.append, simulate=simulate_in_process
    )
    assert started == [
        "[1/4] policy=random seed=0",
        "[2/4] policy=random seed=1",
        "[3/4] policy=all seed=0",
        "[4/4] policy=all seed=1",
    ]
    started.clear()
    run_grid(None, overrides, cases, [0], tmp_path / "runs.csv", on_start=started.append, simulate=simulate_in_process)
    assert started == [
        "[1/2] policy=random seed=0: in the CSV already, skipped",
        "[2/2] policy=all seed=0: in the CSV already, skipped",
    ]


def test_watch_in_a_terminal_is_the_live_bar() -> None:
    out = io.StringIO()
    with watch(2, stream=out, live=True) as on_round:  # as when the stream is a terminal
        on_round({**ROW, "round": 1})
        on_round({**ROW, "round": 2})
    text = out.getvalue()
    assert "round" in text and "2/2" in text and "test/acc=0.913" in text
    assert round_line({**ROW, "round": 2}, 2) not in text  # the bar, not the plain lines
