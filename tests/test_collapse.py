"""The collapse flag on hand-made rounds: accuracy far below its own best late in the run, or the
held-out loss growing while the training loss grows."""

from __future__ import annotations

import pytest

from fedmm.collapse import accuracy_collapse, collapse, loss_growth
from fedmm.results import summarize


def _rounds(accs, train=None, held=None, prefix="val"):
    rows = []
    for r, acc in enumerate(accs):
        row = {
            "round": r,
            f"{prefix}/acc": acc,
            f"{prefix}/loss": (held or [1.0] * len(accs))[r],
            "train/loss": float("nan") if r == 0 else (train or [1.0] * len(accs))[r],
            "seconds": 1.0,
            "bytes-up": 0.0,
            "bytes-down": 0.0,
        }
        if prefix == "val":
            row.update({"test/acc": 0.5, "test/loss": 1.0})
        rows.append(row)
    return rows


def test_a_late_drop_far_below_the_best_is_a_collapse_at_that_round():
    # best 0.77 at round 4; round 8 falls to 0.14 (0.63 below), one of the last 5 of 10 rounds
    accs = [0.1, 0.4, 0.6, 0.7, 0.77, 0.75, 0.76, 0.7, 0.14, 0.7, 0.72]
    hit = accuracy_collapse(_rounds(accs))
    assert hit["round"] == 8 and hit["rule"] == "accuracy"
    assert "val/acc 0.14" in hit["reason"] and "round 4" in hit["reason"]


def test_a_small_drop_or_an_early_dip_is_not_a_collapse():
    # round 9 is 0.15 below the best (not more than 0.2); round 2's dip of 0.5 lies before the last 5 rounds
    accs = [0.1, 0.8, 0.3, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.65, 0.8, 0.8]
    assert accuracy_collapse(_rounds(accs)) is None
    assert accuracy_collapse(_rounds(accs), window=10)["round"] == 2


def test_held_out_loss_growing_with_the_training_loss_is_a_collapse():
    train = [0, 1.0, 0.6, 0.5, 0.9, 1.2, 1.3]
    held = [2, 1.0, 0.7, 0.6, 1.0, 1.1, 1.5]
    # round 5: train 1.2 > 2 x 0.5 and val 1.1 < 2 x 0.6 -> not yet; round 6: 1.3 > 1.0 and 1.5 > 1.2
    hit = loss_growth(_rounds([0.5] * 7, train, held))
    assert hit["round"] == 6 and hit["rule"] == "loss" and "val/loss 1.5" in hit["reason"]


def test_overfitting_is_not_a_collapse():
    # the held-out loss grows 5x while the training loss keeps falling: overfitting, not breakdown
    train = [0, 1.0, 0.5, 0.3, 0.2, 0.1]
    held = [2, 1.0, 0.9, 2.0, 4.0, 5.0]
    assert loss_growth(_rounds([0.5] * 6, train, held)) is None


def test_without_validation_the_test_columns_are_read():
    hit = accuracy_collapse(_rounds([0.1, 0.9, 0.9, 0.3], prefix="test"))
    assert hit["round"] == 3 and "test/acc" in hit["reason"]


def test_the_summary_flags_the_earliest_collapse_and_a_healthy_run_is_not_flagged():
    train = [0, 1.0, 0.5, 0.5, 1.5, 1.5, 1.5]
    held = [2, 1.0, 0.5, 0.5, 1.5, 1.5, 1.5]
    accs = [0.1, 0.5, 0.8, 0.8, 0.8, 0.3, 0.8]
    rows = _rounds(accs, train, held)
    assert collapse(rows)["round"] == 4 and collapse(rows)["rule"] == "loss"  # before the accuracy drop (5)
    summary = summarize(rows)
    assert summary["collapsed"]["round"] == 4 and summary["diverged"] is False  # 1.5 < 10 x round 1's
    healthy = _rounds([0.1, 0.5, 0.6, 0.7, 0.72, 0.71], [0, 1.0, 0.8, 0.7, 0.6, 0.6], [2, 1.0, 0.8, 0.7, 0.65, 0.66])
    assert summarize(healthy)["collapsed"] is False


@pytest.mark.parametrize("rise, expected", [(2.0, 4), (3.5, None)])
def test_the_loss_rule_follows_its_factor(rise, expected):
    rows = _rounds([0.5] * 5, [0, 1.0, 0.5, 0.5, 1.5], [2, 1.0, 0.5, 0.5, 1.5])
    hit = loss_growth(rows, rise=rise)
    assert (hit and hit["round"]) == expected or (hit is None and expected is None)


def test_small_noisy_losses_of_a_well_trained_model_are_not_a_collapse():
    # mfeat at lr 0.2 (measured): validation loss 0.1 -> 0.22 while the training loss of the selected
    # clients doubles; both over 2x their lowest, but the held-out rise (0.12) is under 0.1 x round 0's 2.3
    train = [0, 1.0, 0.3, 0.12, 0.5, 0.3]
    held = [2.3, 0.9, 0.3, 0.1, 0.22, 0.15]
    rows = _rounds([0.1, 0.8, 0.93, 0.95, 0.94, 0.95], train, held)
    assert loss_growth(rows) is None
    assert loss_growth(rows, floor=0.0)["round"] == 4  # the rule without the floor fires
    held[4] = 0.35  # a rise of 0.25 > 0.23
    assert loss_growth(_rounds([0.5] * 6, train, held))["round"] == 4


def test_the_loss_floor_scales_with_round_0s_loss():
    # the same losses after round 0: a rise of 0.12 is over 0.1 x ln 2 (a two-class task), not 0.1 x ln 10
    train, held = [0, 1.0, 0.3, 0.12, 0.5], [0, 0.9, 0.3, 0.1, 0.22]
    held[0] = 0.693
    assert loss_growth(_rounds([0.5] * 5, train, held))["round"] == 4
    held[0] = 2.303
    assert loss_growth(_rounds([0.5] * 5, train, held)) is None
    held[0] = float("nan")  # no initial evaluation: no floor
    assert loss_growth(_rounds([0.5] * 5, train, held))["round"] == 4
