"""The `competition` dataset (strong linear m0, weak sign-ambiguous m1) and its per-round diagnostics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from inprocess import run_in_process
from torch import nn

from fedmm.config import RunConfig
from fedmm.data import load_dataset
from fedmm.data.competition import class_vectors
from fedmm.diagnostics import linear_probe, round_diagnostics
from fedmm.workspace import dataset_of, model_of, objective_of

SMALL = {"num_train": 400, "num_test": 400}


def _signal(d, modality, split="train"):
    """The signal patch (patch 0) of every row, ``(n, d)``."""
    x = getattr(d, split)[modality].numpy()
    return x.reshape(len(x), 4, 16)[:, 0]


def test_the_weak_modality_has_no_class_mean_and_the_strong_one_has():
    d = load_dataset("competition", **SMALL)
    y = d.train["y"].numpy()
    for c in range(4):
        assert np.linalg.norm(_signal(d, "m0")[y == c].mean(0)) > 3.0  # ~ 0.95 * 4 along v0[c]
        assert np.linalg.norm(_signal(d, "m1")[y == c].mean(0)) < 1.2  # random sign: noise only (~ sqrt(16 / 100))
    # the weak signal is there in magnitude: |<x, v1[y]>| ~ 2.5 for the row's own class, ~ 0.8 for another
    rng = np.random.default_rng(0)
    _v0, v1 = class_vectors(rng, 4, 16), class_vectors(rng, 4, 16)  # the loader's draws, in its order
    own = np.abs(np.einsum("nd,nd->n", _signal(d, "m1"), v1[y])).mean()
    other = np.abs(np.einsum("nd,nd->n", _signal(d, "m1"), v1[(y + 1) % 4])).mean()
    assert own > 2.0 and other < 1.0


def test_the_negative_control_makes_the_weak_modality_a_mean_shift():
    d = load_dataset("competition", weak_sign_flip=False, **SMALL)
    y = d.train["y"].numpy()
    assert all(np.linalg.norm(_signal(d, "m1")[y == c].mean(0)) > 2.0 for c in range(4))  # ~ 2.5 along v1[c]


def test_the_hard_rows_are_the_test_rows_without_strong_signal_and_the_shift_moves_them():
    d = load_dataset("competition", **SMALL)
    hard = d.test_subsets["hard"]
    norms = np.linalg.norm(_signal(d, "m0", "test"), axis=1)
    assert norms[hard].mean() < 4.5 < norms[~hard].mean()  # noise only (~4) vs noise + amplitude 4 (~5.7)
    assert 0.0 < hard.mean() < 0.12  # 1 - strong_present = 0.05 of the rows
    shifted = load_dataset("competition", strong_present=1.0, test_strong_present=0.5, **SMALL)
    assert 0.4 < shifted.test_subsets["hard"].mean() < 0.6  # half the test rows lose m0's signal
    assert np.linalg.norm(_signal(shifted, "m0"), axis=1).min() > 1.0  # every train row keeps it


def test_series_kind_and_the_options_are_checked():
    d = load_dataset("competition", kind="series", **SMALL)
    assert d.train["m0"].shape == (400, 16, 4) and d.modalities[0].kind == "series"
    assert torch.equal(
        load_dataset("competition", **SMALL).train["m1"], load_dataset("competition", **SMALL).train["m1"]
    )
    with pytest.raises(ValueError, match="dataset.num-classes"):
        load_dataset("competition", num_classes=20, **SMALL)
    with pytest.raises(ValueError, match="dataset.strong-present"):
        RunConfig.from_mapping({"dataset": "competition", "dataset.strong-present": 1.5})


class _Encoders(nn.Module):
    """A stand-in model whose ``m1`` encoder passes its input through."""

    def __init__(self) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict({"m1": nn.Identity()})
        self.weight = nn.Parameter(torch.zeros(1))


def test_the_linear_probe_is_fitted_on_train_and_scored_on_test():
    rng = np.random.default_rng(0)
    y = np.arange(300) % 3
    x = np.eye(3)[y] * 3 + 0.3 * rng.standard_normal((300, 3))
    test = {"m1": torch.tensor(x[200:], dtype=torch.float32), "y": torch.tensor(y[200:])}
    train = {"m1": torch.tensor(x[:200], dtype=torch.float32), "y": torch.tensor(y[:200])}
    assert linear_probe(_Encoders(), "m1", train, test) == 1.0
    # train labels rotated (class c's features labelled c+1): a probe fitted on train scores 0 on test
    rotated = {**train, "y": (train["y"] + 1) % 3}
    assert linear_probe(_Encoders(), "m1", rotated, test) == 0.0


def test_a_competition_run_records_the_hard_rows_and_the_probe(flower_identity):
    run = RunConfig.from_mapping(
        {
            "dataset": "competition",
            "dataset.num-train": 300,
            "dataset.num-test": 300,
            "partition": "iid",
            "num-clients": 2,
            "clients-per-round": 2,
            "allocation": "all",
            "num-server-rounds": 1,
            "local-epochs": 1,
            "engine": "inline",
            "device": "cpu",
        }
    )
    rows = run_in_process(run)
    assert {"test/acc-hard", "test/probe/m1", "val/acc/m1", "test/acc/m1"} <= set(rows[-1])
    d = dataset_of(run)
    objective = objective_of(run)
    model = model_of(run, objective)
    diag = round_diagnostics(model, d, objective)
    from fedmm.data import subset
    from fedmm.training import evaluate

    hard = subset(d.test, np.flatnonzero(d.test_subsets["hard"]))
    assert diag["test/acc-hard"] == evaluate(model, hard, objective)["acc"]
    assert 0.0 <= diag["test/probe/m1"] <= 1.0


def test_other_datasets_record_no_diagnostics(flower_identity):
    run = RunConfig.from_mapping(
        {
            "dataset": "synthetic",
            "partition": "iid",
            "num-clients": 2,
            "clients-per-round": 2,
            "num-server-rounds": 1,
            "local-epochs": 1,
            "engine": "inline",
            "device": "cpu",
        }
    )
    assert not any("probe" in k or "acc-" in k for k in run_in_process(run)[-1])
