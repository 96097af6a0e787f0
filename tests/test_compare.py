"""``fedmm compare`` and ``fedmm report`` on hand-made result directories (no simulation): the
table's values are computed here by hand from the files written below."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import tomli_w

from fedmm.cli import main
from fedmm.compare import compare_runs, compare_table, differing_keys, expand_run_dirs, markdown, short_names
from fedmm.reporting import best_on_validation, load_run, report_text, run_facts, weak_modality


def write_run(path, config, accs, *, summary=True, val=None, extra_summary=None):
    """A run directory: ``accs`` is one (test/acc, test/acc/a, test/acc/b) per round, round 0 first."""
    path.mkdir(parents=True)
    rows = []
    for r, (acc, a, b) in enumerate(accs):
        row = {
            "round": r,
            "test/acc": acc,
            "test/acc/a": a,
            "test/acc/b": b,
            "test/loss": 2.0 - acc,
            "train/loss": math.nan if r == 0 else 1.5 - acc,
            "bytes-up": 0.0 if r == 0 else 1000.0,
            "bytes-down": 0.0 if r == 0 else 2000.0,
            "seconds": 0.0 if r == 0 else 1.5,
        }
        if val is not None:
            row["val/acc"] = val[r]
        rows.append(row)
    pd.DataFrame(rows).to_csv(path / "rounds.csv", index=False)
    pd.DataFrame(
        [
            {
                "round": 1,
                "node-id": 1,
                "partition-id": 0,
                "modalities-held": "a+b",
                "modalities-trained": "a+b",
                "status": "ok",
            }
        ]
    ).to_csv(path / "clients.csv", index=False)
    (path / "config.toml").write_text(tomli_w.dumps({"dataset": "synthetic", "seed": 0, **config}))
    if summary:
        trained = [acc for acc, _, _ in accs[1:]]
        mean = sum(trained) / len(trained)
        std = math.sqrt(sum((t - mean) ** 2 for t in trained) / len(trained))
        last = accs[-1]
        s = {
            "rounds": len(accs) - 1,
            "final": {"test/acc": last[0], "test/acc/a": last[1], "test/acc/b": last[2]},
            "best-test/acc": max(a for a, _, _ in accs),
            "best-round": 1,
            "total-seconds": 1.5 * (len(accs) - 1),
            "total-bytes-up": 1000.0 * (len(accs) - 1),
            "total-bytes-down": 2000.0 * (len(accs) - 1),
            "last-rounds": len(trained),
            "last-rounds-test/acc": mean,
            "last-rounds-test/acc-std": std,
            "diverged": False,
            "status": "completed",
            **(extra_summary or {}),
        }
        (path / "summary.json").write_text(json.dumps(s))
    return path


@pytest.fixture
def two_runs(tmp_path):
    a = write_run(
        tmp_path / "runs" / "fedavg",
        {"strategy": "fedavg", "lr": 0.05, "out-dir": "x"},
        [(0.2, 0.3, 0.1), (0.6, 0.5, 0.2), (0.7, 0.65, 0.3)],
    )
    b = write_run(
        tmp_path / "runs" / "fedcmi",
        {"strategy": "fedcmi", "lr": 0.05, "out-dir": "y"},
        [(0.2, 0.3, 0.1), (0.5, 0.2, 0.45), (0.9, 0.35, 0.8)],
    )
    return a, b


def test_compare_table_shows_what_differs_and_each_runs_numbers(two_runs, tmp_path):
    table, written = compare_runs([str(tmp_path / "runs" / "*")], tmp_path / "cmp")
    # sorted glob: fedavg then fedcmi; out-dir never counts as a difference, equal keys are left out
    assert table["run"].tolist() == ["fedavg", "fedcmi"]
    assert "strategy" in table.columns and "lr" not in table.columns and "out-dir" not in table.columns
    assert table["strategy"].tolist() == ["fedavg", "fedcmi"]
    assert table["test/acc"].tolist() == [0.7, 0.9]
    assert table["last-rounds-test/acc"].tolist() == pytest.approx([0.65, 0.7])  # (0.6+0.7)/2, (0.5+0.9)/2
    assert table["last-rounds-test/acc-std"].tolist() == pytest.approx([0.05, 0.2])
    # the weak modality is the one with the lowest final unimodal accuracy: b (0.3) and a (0.35)
    assert table["weak-modality"].tolist() == ["b", "a"]
    assert table["weak-modality-test/acc"].tolist() == [0.3, 0.35]
    assert table["bytes"].tolist() == [6000.0, 6000.0]  # 2 rounds x (1000 up + 2000 down)
    assert table["seconds"].tolist() == [3.0, 3.0]
    assert "best-val/acc" not in table.columns  # no validation split in these runs
    # Markdown and CSV out, plus one overlay plot per metric
    names = {p.name for p in written}
    assert {
        "compare.md",
        "compare.csv",
        "compare-test-acc.png",
        "compare-test-loss.png",
        "compare-train-loss.png",
        "compare-test-acc-a.png",
        "compare-test-acc-b.png",
    } <= names
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| fedavg | fedavg | completed | 2 | 0.7000 | 0.6500 ± 0.0500 | b 0.300 | 6.0 kB | 3.0 |" in md
    csv = pd.read_csv(tmp_path / "cmp" / "compare.csv")
    assert csv["test/acc"].tolist() == [0.7, 0.9]


def test_best_on_validation_is_chosen_on_validation_not_on_test(tmp_path):
    # val peaks at round 1 (test 0.6 there); test peaks at round 2: the table must report round 1's test
    run = write_run(tmp_path / "v", {}, [(0.2, 0.2, 0.1), (0.6, 0.5, 0.2), (0.9, 0.8, 0.3)], val=[0.1, 0.8, 0.7])
    assert best_on_validation(load_run(run)) == (0.8, 1, 0.6)
    facts = run_facts(load_run(run))
    assert (facts["best-val/acc"], facts["test/acc-at-best-val"]) == (0.8, 0.6)
    other = write_run(tmp_path / "w", {"lr": 0.1}, [(0.2, 0.2, 0.1), (0.6, 0.5, 0.2), (0.9, 0.8, 0.3)])
    table = compare_table([load_run(run), load_run(other)])
    assert table["test/acc-at-best-val"].tolist()[0] == 0.6 and math.isnan(table["best-val/acc"].tolist()[1])
    # a summary with the validation keys (written by a run with a validation split) is taken as it is
    given = write_run(
        tmp_path / "s",
        {},
        [(0.2, 0.2, 0.1), (0.6, 0.5, 0.2)],
        val=[0.1, 0.2],
        extra_summary={"best-val/acc": 0.77, "best-val-round": 1, "test/acc-at-best-val": 0.55},
    )
    assert best_on_validation(load_run(given)) == (0.77, 1, 0.55)


def test_differing_keys_and_short_names(tmp_path):
    assert differing_keys([{"a": 1, "b": 2, "out-dir": "x"}, {"a": 1, "b": 3, "out-dir": "y"}, {"a": 1}]) == ["b"]
    assert differing_keys([{"a": 1}, {"a": 1, "c": 0}]) == ["c"]  # absent from one counts as different
    assert short_names([tmp_path / "r" / "x" / "seed0", tmp_path / "r" / "y" / "seed0"]) == ["x/seed0", "y/seed0"]
    assert weak_modality({"test/acc": 0.9, "test/acc/a": 0.4, "test/acc/b": 0.5}) == ("a", 0.4)
    assert weak_modality({"test/acc": 0.9}) is None


def test_a_directory_of_runs_stands_for_its_runs_and_globs_expand(two_runs, tmp_path):
    a, b = two_runs
    assert expand_run_dirs([tmp_path / "runs"]) == [a.resolve(), b.resolve()]
    assert expand_run_dirs([str(tmp_path / "runs" / "fed*")]) == [a.resolve(), b.resolve()]
    assert expand_run_dirs([a, a]) == [a.resolve()]
    with pytest.raises(ValueError, match="matches no run directory"):
        expand_run_dirs([str(tmp_path / "nothing*")])
    (tmp_path / "runs" / "compare").mkdir()  # an earlier `fedmm compare 'runs/*' --out runs/compare`
    (tmp_path / "runs" / "notes.txt").write_text("")
    assert expand_run_dirs([str(tmp_path / "runs" / "*")]) == [a.resolve(), b.resolve()]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty.*holds no run"):
        expand_run_dirs([tmp_path / "empty"])


def test_damaged_or_missing_files_are_one_message_naming_the_file(two_runs, tmp_path, capsys):
    a, b = two_runs
    (b / "summary.json").write_text("{not json")
    assert main(["compare", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert "summary.json" in err and str(b) in err and "Traceback" not in err
    (b / "summary.json").unlink()  # without a summary the run's rounds are summarised (an unfinished run)
    assert run_facts(load_run(b))["status"] == "unfinished" and run_facts(load_run(b))["test/acc"] == 0.9
    (b / "rounds.csv").write_bytes(b"\xff\xfe\x00garbage\x00\n\x01")
    assert main(["compare", str(a), str(b)]) == 2
    assert "rounds.csv" in capsys.readouterr().err
    (b / "rounds.csv").write_text("x,y\n1,2\n")
    with pytest.raises(ValueError, match=r"rounds.csv.*no 'round' column"):
        load_run(b)
    (b / "rounds.csv").unlink()
    assert main(["report", str(b)]) == 2
    assert "holds no run (no rounds.csv" in capsys.readouterr().err
    (a / "config.toml").write_text("= broken")
    assert main(["report", str(a)]) == 2
    assert "config.toml" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "missing")]) == 2
    assert "missing' does not exist" in capsys.readouterr().err


def test_compare_cli_prints_markdown_when_not_a_terminal(two_runs, tmp_path, capsys):
    assert main(["compare", str(tmp_path / "runs" / "*"), "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| run | strategy |")
    assert "wrote" in out and (tmp_path / "cmp" / "compare-test-acc.png").is_file()
    assert markdown(compare_table([load_run(p) for p in two_runs])).count("\n") == 3  # header, rule, 2 rows


def test_report_prints_rounded_numbers_and_takes_several_directories(two_runs, capsys):
    a, b = two_runs
    text = report_text(load_run(a))
    assert "synthetic · strategy fedavg" in text.replace("dataset ", "")
    assert "final test/acc 0.7000" in text and "0.6500 ± 0.0500" in text and "weak: b" in text
    assert "6.0 kB" in text
    assert main(["report", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert out.count("run ") >= 2 and "fedmm compare" in out
    # no float printed with more than 4 decimals (the raw JSON had 16 digits)
    import re

    assert not re.search(r"\d\.\d{5,}", out)


def test_overlay_plots_one_line_per_run_with_a_title(two_runs, tmp_path, monkeypatch):
    import fedmm.plots as plots
    from fedmm.compare import metric_title, plot_overlays

    kept = []
    monkeypatch.setattr(plots, "close", kept.append)
    runs = [load_run(p) for p in two_runs]
    paths = plot_overlays(runs, tmp_path, ["A", "B"])
    assert [p.name for p in paths][:3] == ["compare-test-acc.png", "compare-test-loss.png", "compare-train-loss.png"]
    by_title = {fig.axes[0].get_title(): fig.axes[0] for fig in kept}
    ax = by_title["test accuracy, b alone: 2 runs"]
    assert [line.get_label() for line in ax.get_lines()] == ["A", "B"]
    assert [list(line.get_ydata()) for line in ax.get_lines()] == [[0.1, 0.2, 0.3], [0.1, 0.45, 0.8]]
    assert metric_title("test/acc-fill/a") == "test accuracy, a with FedCMI's fill"


def test_rich_table_for_a_terminal(two_runs):
    from rich.console import Console

    from fedmm.compare import rich_table

    console = Console(record=True, width=250)
    console.print(rich_table(compare_table([load_run(p) for p in two_runs])))
    text = console.export_text()
    assert "fedmm compare: 2 runs" in text and "0.6500 ± 0.0500" in text and "b 0.300" in text
