"""fedmm bench methods --protocol: the comparison table (interval, paired tests against FedAvg on the
same seeds) and a quick tuned benchmark end to end."""

import math
import tomllib

import pandas as pd
import pytest
from inprocess import simulate_in_process

from fedmm.bench import methods_benchmark
from fedmm.bench_protocol import comparison, comparison_table, toml_value


def runs_frame():
    rows = []
    base = [0.80, 0.80, 0.80, 0.80, 0.80]
    other = [0.81, 0.82, 0.77, 0.84, 0.85]  # differences 0.01, 0.02, -0.03, 0.04, 0.05 (test_stats)
    for method, values in (("fedavg", base), ("fedavg+mnl", other)):
        for seed, v in enumerate(values):
            rows.append(
                {
                    "dataset": "d",
                    "method": method,
                    "seed": seed,
                    "test/acc-at-best-val": v,
                    "last-test/acc": v - 0.01,
                    "test/acc/x-at-best-val": v - 0.1,
                    "test/acc/x": v - 0.1,
                    "test/acc/y": v - 0.3,
                    "test/acc/y-at-best-val": v - 0.3,
                }
            )
    return pd.DataFrame(rows[::-1])  # seeds out of order: pairs are matched by seed


def test_the_comparison_pairs_seeds_with_the_baseline_and_gives_the_t_interval():
    tidy = comparison(runs_frame(), ["d"], ["fedavg", "fedavg+mnl"])
    primary = tidy[(tidy["method"] == "fedavg+mnl") & (tidy["metric"] == "test/acc-at-best-val")].iloc[0]
    d = [0.01, 0.02, -0.03, 0.04, 0.05]
    mean = sum(d) / 5
    s = math.sqrt(sum((x - mean) ** 2 for x in d) / 4)
    t = mean / (s / math.sqrt(5))
    x = 1 + t * t / 4
    t_p = 2 * (1 - (0.5 + 3 / 8 * t / math.sqrt(x) * (1 - t * t / (12 * x))))  # Student t, 4 dof, closed form
    assert primary["diff"] == pytest.approx(0.018) and primary["t-p"] == pytest.approx(t_p)
    assert primary["wilcoxon-p"] == pytest.approx(10 / 32) and primary["pairs"] == 5
    half = 2.776445 * primary["std"] / math.sqrt(5)
    assert primary["mean"] == pytest.approx(0.818)
    assert (primary["ci-low"], primary["ci-high"]) == (
        pytest.approx(0.818 - half, abs=1e-5),
        pytest.approx(0.818 + half, abs=1e-5),
    )
    assert set(tidy["metric"]) == {"test/acc-at-best-val", "last-test/acc", "test/acc/y-at-best-val"}  # y: weakest
    baseline = tidy[tidy["method"] == "fedavg"]
    assert baseline["diff"].isna().all() and (baseline["std"] == 0).all()

    table = comparison_table(tidy, ["d"], ["fedavg", "fedavg+mnl"], "tuned")
    assert "**d** (protocol tuned; weakest modality: y)" in table
    assert (
        f"| fedavg+mnl | 0.818 ± 0.031 | [{0.818 - half:.3f}, {0.818 + half:.3f}] | +0.018 | {t_p:.3f} | 0.312 | "
        "0.808 ± 0.031 | 0.518 ± 0.031 | 5 |" in table
    )
    assert "| fedavg | 0.800 ± 0.000 | [0.800, 0.800] | — | — | — |" in table
    assert "Wilcoxon signed-rank test (with 5 seeds its smallest possible p is 0.0625)" in table
    three = comparison(runs_frame().query("seed < 3"), ["d"], ["fedavg", "fedavg+mnl"])
    assert "(with 3 seeds its smallest possible p is 0.25)" in comparison_table(three, ["d"], ["fedavg"], "tuned")


def test_override_values_are_toml_literals():
    assert toml_value(0.001) == "0.001" and toml_value(3) == "3" and toml_value("concat") == '"concat"'
    assert tomllib.loads(f"v = {toml_value(1e-05)}")["v"] == 1e-05


def test_a_quick_tuned_benchmark_tunes_each_method_then_runs_its_choice_on_the_seeds(flower_identity, tmp_path):
    from fedmm.tune import TuneSettings

    settings = TuneSettings(trials=2, pruner="none", params=("lr",))
    table = methods_benchmark(
        ["synthetic"],
        ["fedavg", "fedavg+mnl"],
        [0, 1],
        tmp_path,
        quick=True,
        simulate=simulate_in_process,
        protocol="tuned",
        tune_settings=settings,
    )
    assert "(protocol tuned; weakest modality: m2)" in table and "| fedavg+mnl |" in table
    for method in ("fedavg", "fedavg+mnl"):
        best = tomllib.loads((tmp_path / "tune" / f"synthetic-{method}" / "best.toml").read_text())
        for seed in (0, 1):
            run = tomllib.loads((tmp_path / "runs" / f"synthetic-{method}-seed{seed}" / "config.toml").read_text())
            assert run["lr"] == best["lr"] and run["seed"] == seed
    tidy = pd.read_csv(tmp_path / "comparison.csv")
    assert set(tidy["method"]) == {"fedavg", "fedavg+mnl"} and (tidy["n"] == 2).all()
    assert (tmp_path / "comparison.png").is_file() and (tmp_path / "comparison.md").read_text().strip() == table


def test_the_paper_protocol_sets_the_preset_and_an_unknown_protocol_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--protocol must be one of defaults, paper, tuned"):
        methods_benchmark(["synthetic"], ["fedavg"], [0], tmp_path, protocol="best")
    seen = []

    def record(run, out_dir, **_):
        seen.append(run)
        raise KeyboardInterrupt

    try:
        methods_benchmark(["synthetic"], ["fedavg"], [0], tmp_path, protocol="paper", simulate=record)
    except KeyboardInterrupt:
        pass
    except ValueError as err:  # before the preset key exists (branch h22-data), the config names it
        assert "preset" in str(err)
        return
    assert seen[0].preset == "paper"


def test_a_tuned_selection_benchmark_tunes_each_policy_and_compares_it_with_random(flower_identity, tmp_path):
    from fedmm.bench import selection_benchmark
    from fedmm.tune import TuneSettings

    overrides = [
        "dataset=synthetic",
        "partition=iid",
        "num-clients=4",
        "clients-per-round=2",
        "num-server-rounds=2",
        "local-epochs=1",
    ]
    table = selection_benchmark(
        None,
        overrides,
        ["powd", "random"],
        [0, 1],
        tmp_path,
        simulate=simulate_in_process,
        protocol="tuned",
        tune_settings=TuneSettings(trials=2, pruner="none", params=("lr",)),
    )
    for policy in ("powd", "random"):
        best = tomllib.loads((tmp_path / "tune" / f"synthetic-{policy}" / "best.toml").read_text())
        assert best["selection"] == policy
        for seed in (0, 1):
            run = tomllib.loads((tmp_path / "runs" / f"{policy}-seed{seed}" / "config.toml").read_text())
            assert run["lr"] == best["lr"] and run["seed"] == seed and run["selection"] == policy
    assert "| powd |" in table and "diff vs random" in table and "(protocol tuned;" in table
    tidy = pd.read_csv(tmp_path / "comparison.csv")
    assert set(tidy["method"]) == {"powd", "random"} and (tidy["n"] == 2).all()
    assert (
        tidy[tidy["method"] == "random"]["diff"].isna().all() and tidy[tidy["method"] == "powd"]["diff"].notna().all()
    )
