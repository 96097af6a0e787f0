"""``partition = "auto"`` (the default): natural clients where the dataset has them, else Dirichlet
over ``num-clients`` (20 when 0), said once; explicit choices unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from fedmm.cli import main
from fedmm.config import load_config
from fedmm.data.partition import AUTO_NUM_CLIENTS, partition_note, resolve_partition
from fedmm.workspace import scenario_note, scenario_of


def test_auto_resolves_to_natural_with_groups_else_dirichlet_over_20_clients() -> None:
    assert AUTO_NUM_CLIENTS == 20
    assert resolve_partition("auto", None, True) == ("natural", None)
    assert resolve_partition("auto", None, False) == ("dirichlet", 20)
    assert resolve_partition("auto", 7, False) == ("dirichlet", 7)
    for scheme in ("natural", "iid", "dirichlet"):  # explicit choices are kept as given
        assert resolve_partition(scheme, 5, False) == (scheme, 5)
    assert partition_note("hapt", "auto", None, True, 3.0) is None  # natural clients need no note
    assert partition_note("segment", "dirichlet", 20, False, 3.0) is None  # an explicit choice neither
    note = partition_note("segment", "auto", None, False, 3.0)
    assert note == (
        "partition: segment has no natural clients, so partition='auto' splits it Dirichlet (alpha 3) "
        "over 20 clients; set partition (iid, dirichlet) and num-clients to choose"
    )


def _same(a, b) -> bool:
    return (
        len(a.partitions) == len(b.partitions)
        and a.modalities == b.modalities
        and all(np.array_equal(x, y) for x, y in zip(a.partitions, b.partitions))
    )


@pytest.mark.parametrize("dataset", ["segment", "mfeat", "synthetic"])
def test_a_dataset_without_natural_clients_gets_the_explicit_dirichlet_split(dataset: str) -> None:
    auto = load_config(None, [f"dataset={dataset}"])
    assert auto.partition == "auto" and auto.num_clients == 0
    explicit = load_config(None, [f"dataset={dataset}", "partition=dirichlet", "num-clients=20"])
    assert _same(scenario_of(auto), scenario_of(explicit))
    assert len(scenario_of(auto).partitions) == 20
    assert "Dirichlet (alpha 3) over 20 clients" in scenario_note(auto)
    assert scenario_note(explicit) is None
    ten = load_config(None, [f"dataset={dataset}", "num-clients=10"])
    assert _same(
        scenario_of(ten),
        scenario_of(load_config(None, [f"dataset={dataset}", "partition=dirichlet", "num-clients=10"])),
    )


def test_hapt_by_default_is_its_natural_split_as_before() -> None:
    auto = load_config(None, [])
    natural = load_config(None, ["partition=natural"])
    # 24 training users; the validation split holds 4 of them out (docs/validation.md)
    assert _same(scenario_of(auto), scenario_of(natural)) and len(scenario_of(auto).partitions) == 20
    assert len(scenario_of(load_config(None, ["validation=off"])).partitions) == 24
    assert scenario_note(auto) is None


def test_explicit_natural_on_a_dataset_without_groups_is_still_the_error(tmp_path, capsys) -> None:
    out = tmp_path / "never"
    assert main(["simulate", "--set", "dataset=synthetic", "--set", "partition=natural", "--out", str(out)]) == 2
    assert "natural clients" in capsys.readouterr().err and not out.exists()


def test_simulate_says_which_partition_once(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert (
        main(
            [
                "simulate",
                "--set",
                "dataset=synthetic",
                "--set",
                "num-server-rounds=1",
                "--set",
                "local-epochs=1",
                "--set",
                "engine=inline",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    stdout = capsys.readouterr().out
    assert stdout.count("partition='auto' splits it Dirichlet (alpha 3) over 20 clients") == 1
    assert 'partition = "auto"' in (out / "config.toml").read_text()
