"""``fedmm bench methods``: every method on every shipped dataset, one tidy CSV and one table."""

import subprocess
import sys

import pandas as pd
import pytest
from inprocess import simulate_in_process

from fedmm.bench import METHODS, methods_benchmark


def test_quick_methods_benchmark_runs_every_method_on_synthetic_with_three_modalities(flower_identity, tmp_path):
    table = methods_benchmark(["synthetic"], list(METHODS), [0], tmp_path, quick=True, simulate=simulate_in_process)
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert sorted(runs["method"]) == sorted(METHODS) and set(runs["dataset"]) == {"synthetic"}
    for column in (
        "test/acc",
        "last-test/acc",
        "best-test/acc",
        "test/acc/m2",
        "test/imbalance",
        "loss-growth",
        "diverged-round",
    ):
        assert column in runs
    assert runs["test/acc"].between(0, 1).all() and (runs["loss-growth"] >= 1).all()
    assert (tmp_path / "runs" / "synthetic-cmsfed+random-seed0" / "rounds.csv").is_file()
    # the weakest of synthetic's modalities is m2 (strengths 1.5, 0.95, 0.4)
    assert "**synthetic** (weakest modality: m2)" in table and "| m2 alone |" in table
    assert all(f"| {m} |" in table for m in METHODS)
    assert (tmp_path / "methods.md").read_text().strip() == table


def test_methods_benchmark_names_an_unknown_method(tmp_path):
    with pytest.raises(ValueError, match="unknown method 'fedsgd'.*fedavg"):
        methods_benchmark(["synthetic"], ["fedsgd"], [0], tmp_path)


@pytest.mark.integration
@pytest.mark.slow  # over a minute on 2 cores: `make test-slow`
def test_fedmm_bench_methods_quick_from_the_command_line(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedmm.cli",
            "bench",
            "methods",
            "--quick",
            "--methods",
            "fedavg,cmsfed",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "synthetic fedavg seed 0" in out.stdout and "| cmsfed |" in out.stdout
    assert len(pd.read_csv(tmp_path / "runs.csv")) == 2


def test_methods_table_takes_each_datasets_weakest_modality_among_its_own():
    from fedmm.bench import methods_table

    runs = pd.DataFrame(
        [
            {
                "dataset": "a",
                "method": "fedavg",
                "seed": 0,
                "test/acc": 0.9,
                "best-test/acc": 0.9,
                "test/acc/x": 0.8,
                "test/acc/y": 0.5,
                "test/imbalance": 1.6,
                "loss-growth": 1.0,
                "diverged-round": float("nan"),
            },
            {
                "dataset": "b",
                "method": "fedavg",
                "seed": 0,
                "test/acc": 0.7,
                "last-test/acc": 0.75,
                "best-test/acc": 0.8,
                "test/acc/u": 0.6,
                "test/acc/v": 0.65,
                "test/imbalance": 1.1,
                "loss-growth": 4.0,
                "diverged-round": 3,
            },
        ]
    )
    table = methods_table(runs, ["a", "b"], ["fedavg"])
    assert "**a** (weakest modality: y)" in table and "**b** (weakest modality: u)" in table
    assert "| fedavg | 0.700 | 0.750 | 0.800 | 0.600 | 1.100 | 4.000 | 1/1 |" in table
    assert "| fedavg | 0.900 | n/a | 0.900 | 0.500 |" in table  # a row without the column (an older CSV)
    assert "| last 5 rounds acc | best acc (oracle: round chosen on test) |" in table  # no validation split
    chosen = methods_table(runs.assign(**{"test/acc-at-best-val": [0.85, 0.65]}), ["a", "b"], ["fedavg"])
    assert "| last 5 rounds acc | test acc at best-val round |" in chosen and "oracle" not in chosen
    assert "| fedavg | 0.700 | 0.750 | 0.650 | 0.600 |" in chosen  # the round chosen on validation, not 0.8


def test_the_competition_federation_replaces_the_common_half_unimodal_allocation(tmp_path):
    """competition runs the federation of its benchmark (docs/competition.md): 10 IID clients, all
    holding both modalities and all trained; the Dirichlet datasets keep half of the clients unimodal."""
    seen = []

    def record(run, out_dir, **_):
        seen.append(run)
        raise KeyboardInterrupt  # the config is all this test needs

    for dataset in ("competition", "segment"):
        with pytest.raises(KeyboardInterrupt):
            methods_benchmark([dataset], ["fedavg+mnl"], [0], tmp_path / dataset, simulate=record)
    competition, segment = seen
    assert (competition.dataset, competition.partition, competition.allocation) == ("competition", "iid", "all")
    assert (competition.num_clients, competition.clients_per_round, competition.objective) == (10, 10, "mnl")
    assert (segment.allocation, segment.multi_ratio, segment.partition) == ("multi-ratio", 0.5, "dirichlet")


def test_every_shipped_dataset_has_a_natural_or_iid_and_a_strongly_skewed_federation():
    """Item 8 of the comparison issue: two federations per shipped dataset; the skewed one is
    Dirichlet alpha <= 0.5 over at least 20 clients with part of them unimodal."""
    from fedmm.bench import METHOD_COMMON, METHOD_FEDERATIONS
    from fedmm.config import load_config

    kinds: dict[str, set[str]] = {}
    for federation in METHOD_FEDERATIONS.values():
        run = load_config(None, [*METHOD_COMMON, *federation])
        if run.partition == "dirichlet":
            assert run.dirichlet_alpha <= 0.5 and run.num_clients >= 20
            assert run.allocation == "multi-ratio" and 0 < run.multi_ratio < 1
            kind = "skewed"
        else:
            assert run.partition in ("natural", "iid")
            kind = "natural or iid"
        kinds.setdefault(run.dataset, set()).add(kind)
    assert set(kinds) == {"hapt", "segment", "mfeat", "synthetic", "competition"}
    assert all(k == {"skewed", "natural or iid"} for k in kinds.values()), kinds


def test_synthetic_hard_is_the_skewed_synthetic_federation_on_weaker_signals():
    """``synthetic-hard`` differs from ``synthetic`` in its strengths only, and they reach the data:
    a nearest-class-mean read of m0 is near perfect on ``synthetic`` and far from it on ``synthetic-hard``."""
    import numpy as np

    from fedmm.bench import METHOD_COMMON, METHOD_FEDERATIONS
    from fedmm.config import load_config
    from fedmm.data.registry import load_dataset

    def nearest_mean_accuracy(federation: str) -> float:
        run = load_config(None, [*METHOD_COMMON, *METHOD_FEDERATIONS[federation]])
        data = load_dataset(run.dataset, seed=run.seed, **run.dataset_options)
        x, y = data.train["m0"].numpy(), data.train["y"].numpy()
        means = np.stack([x[y == c].mean(0) for c in range(len(data.class_names))])
        distances = ((data.test["m0"].numpy()[:, None, :] - means[None]) ** 2).sum(-1)
        return float((distances.argmin(1) == data.test["y"].numpy()).mean())

    hard, easy = set(METHOD_FEDERATIONS["synthetic-hard"]), set(METHOD_FEDERATIONS["synthetic"])
    assert hard - easy == {"dataset.strengths=0.6,0.4,0.25"} and easy <= hard
    assert nearest_mean_accuracy("synthetic") > 0.95
    assert 0.5 < nearest_mean_accuracy("synthetic-hard") < 0.9
