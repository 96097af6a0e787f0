import numpy as np
import pytest

from fedmm.data import (
    allocate_modalities,
    build_scenario,
    client_data,
    load_dataset,
    parse_fractions,
    partition_indices,
)
from fedmm.data.partition import dirichlet_partition

LABELS = np.repeat(np.arange(5), 100)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_partitions_cover_every_row_once_and_are_deterministic(scheme):
    a = partition_indices(LABELS, 8, scheme, seed=1, alpha=0.5)
    b = partition_indices(LABELS, 8, scheme, seed=1, alpha=0.5)
    c = partition_indices(LABELS, 8, scheme, seed=2, alpha=0.5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert any(not np.array_equal(x, y) for x, y in zip(a, c))
    rows = np.concatenate(a)
    assert len(rows) == len(LABELS) and len(np.unique(rows)) == len(LABELS)


def test_natural_partition_and_its_errors():
    groups = np.array([3, 1, 3, 2, 1, 2])
    parts = partition_indices(np.zeros(6), None, "natural", seed=0, groups=groups)
    assert [p.tolist() for p in parts] == [[1, 4], [3, 5], [0, 2]]
    with pytest.raises(ValueError, match="must be 0 or 3"):
        partition_indices(np.zeros(6), 5, "natural", seed=0, groups=groups)
    with pytest.raises(ValueError, match="natural clients"):
        partition_indices(np.zeros(6), None, "natural", seed=0)


def test_dirichlet_cap_stops_a_full_client_from_getting_more():
    # two clients, cap = 1.0 * 100 / 2 = 50; class 0 (50 rows) cannot overfill anyone by itself,
    # but once a client holds more than 50 rows it must get nothing of the later classes.
    labels = np.repeat(np.arange(4), 25)
    rng = np.random.default_rng(0)
    for _ in range(20):
        parts = dirichlet_partition(labels, 2, 0.1, rng, cap_factor=1.0)
        counts = [[int((labels[p] == c).sum()) for c in range(4)] for p in parts]
        for client in counts:
            held = 0
            for c in range(4):
                if held > 50:
                    assert client[c] == 0
                held += client[c]


def test_dirichlet_skews_labels_more_for_small_alpha():
    def skew(alpha):
        parts = partition_indices(LABELS, 10, "dirichlet", seed=0, alpha=alpha)
        return np.mean([np.bincount(LABELS[p], minlength=5).max() / len(p) for p in parts])

    assert skew(0.1) > skew(100.0) + 0.2


def test_multi_ratio_counts_for_two_and_three_modalities():
    mods = allocate_modalities(10, ["a", "b"], mode="multi-ratio", seed=0, multi_ratio=0.4)
    assert mods.count(("a", "b")) == 4 and mods.count(("a",)) == 3 and mods.count(("b",)) == 3
    mods = allocate_modalities(10, ["a", "b", "c"], mode="multi-ratio", seed=0, multi_ratio=0.1)
    assert mods.count(("a", "b", "c")) == 1 and sorted(mods.count((m,)) for m in "abc") == [3, 3, 3]
    assert allocate_modalities(3, ["a", "b"], mode="all", seed=0) == [("a", "b")] * 3


def test_missing_rate_is_nested_across_rates():
    mods = ["a", "b", "c"]
    by_rate = {r: allocate_modalities(200, mods, mode="missing-rate", seed=7, missing_rate=r) for r in (0.1, 0.2, 0.5)}
    for low, high in ((0.1, 0.2), (0.2, 0.5)):
        for m in mods:
            lacking_low = {k for k, held in enumerate(by_rate[low]) if m not in held}
            lacking_high = {k for k, held in enumerate(by_rate[high]) if m not in held}
            assert lacking_low <= lacking_high
    assert all(len(h) >= 1 for h in by_rate[0.5])
    missing = sum(m not in h for h in by_rate[0.2] for m in mods) / (200 * 3)
    assert 0.12 < missing < 0.28


def test_fractions_allocation_and_parse_errors():
    fr = parse_fractions("acc=0.25, gyro=0.25, acc+gyro=0.5", ["acc", "gyro"])
    assert fr == {("acc",): 0.25, ("gyro",): 0.25, ("acc", "gyro"): 0.5}
    mods = allocate_modalities(8, ["acc", "gyro"], mode="fractions", seed=0, fractions=fr)
    assert mods.count(("acc", "gyro")) == 4 and mods.count(("acc",)) == 2
    for bad, message in [
        ("acc=0.5", "sum to 1"),
        ("acc=x,gyro=1", "not a number"),
        ("mag=1", "modalities of the dataset"),
        ("acc", "subset=fraction"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_fractions(bad, ["acc", "gyro"])


def test_scenario_on_hapt_and_client_data_holds_only_its_modalities():
    d = load_dataset("hapt")
    s = build_scenario(d, num_clients=None, partition="natural", allocation="multi-ratio", seed=0, multi_ratio=0.5)
    assert len(s.partitions) == 24 and sum(len(m) == 2 for m in s.modalities) == 12
    unimodal = next(k for k, m in enumerate(s.modalities) if len(m) == 1)
    data = client_data(d, s, unimodal)
    assert set(data) == {*s.modalities[unimodal], "y"}
