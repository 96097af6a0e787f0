"""A run whose training diverges says so in its summary (issue 15): ``diverged`` with the round."""

import math

import pytest

from fedmm.config import load_config
from fedmm.inline import InlineGrid
from fedmm.results import divergence, loss_stability


def _rows(losses, test_losses=None):
    test_losses = test_losses or [1.0] * len(losses)
    return [{"round": 0, "train/loss": math.nan, "test/loss": 2.0}] + [
        {"round": r, "train/loss": loss, "test/loss": t} for r, (loss, t) in enumerate(zip(losses, test_losses), 1)
    ]


def test_loss_stability_is_the_largest_round_loss_over_the_first_rounds():
    stats = loss_stability(_rows([2.0, math.nan, 5.0, 3.0]))
    assert stats == {"loss-round-1": 2.0, "loss-max": 5.0, "loss-growth": 2.5}


def test_divergence_is_the_first_round_over_ten_times_round_one():
    assert divergence(_rows([1.0, 9.0, 10.0, 2.0])) is None  # 10 x is not over 10 x
    # against round 1's loss, not the previous round's: 3 -> 25 is 8x the previous, 25x round 1
    hit = divergence(_rows([1.0, 3.0, 25.0, 30.0]))
    assert hit["round"] == 3 and "25" in hit["reason"]
    assert divergence(_rows([1.0, 1.0], [1.0, math.inf]))["round"] == 2
    err = "node 1 (partition 0): rejected: 'train-loss' is nan, not a finite number"
    assert divergence(_rows([1.0, math.nan]), err)["round"] == 2
    assert divergence(_rows([1.0, math.nan]), "node 1 (partition 0): error: out of memory") is None


@pytest.mark.parametrize("lr, status", [(5.0, "completed"), (1000.0, "failed")])
def test_a_run_made_to_diverge_is_flagged_in_its_summary(flower_identity, caplog, lr, status):
    from fedmm.server.loop import run_federation
    from fedmm.server.plan import prepare

    run = load_config(
        None,
        [
            "dataset=synthetic",
            "num-clients=4",
            "partition=iid",
            "num-server-rounds=4",
            "local-epochs=1",
            f"lr={lr}",
            "momentum=0.0",
        ],
    )
    summary = run_federation(InlineGrid(4), prepare(run))
    assert summary["status"] == status
    assert summary["diverged"] and summary["diverged"]["round"] >= 1
    if status == "completed":  # the log says so when it happens, once
        said = [r.getMessage() for r in caplog.records if "training diverged" in r.getMessage()]
        assert len(said) == 1 and f"round {summary['diverged']['round']}:" in said[0]


def test_a_healthy_run_is_not_flagged(flower_identity):
    from fedmm.server.loop import run_federation
    from fedmm.server.plan import prepare

    run = load_config(
        None, ["dataset=synthetic", "num-clients=4", "partition=iid", "num-server-rounds=3", "local-epochs=1"]
    )
    summary = run_federation(InlineGrid(4), prepare(run))
    assert summary["diverged"] is False and summary["loss-growth"] <= 3.0


def test_last_rounds_average_the_last_five_training_rounds():
    from fedmm.results import last_rounds

    rows = [{"round": 0, "test/acc": 0.1}] + [
        {"round": r, "test/acc": a} for r, a in enumerate([0.2, 0.9, 0.5, 0.7, 0.6, 0.8, 0.4], 1)
    ]
    stats = last_rounds(rows)
    assert stats["last-rounds"] == 5
    assert stats["last-rounds-test/acc"] == pytest.approx(0.6)  # rounds 3-7: 0.5, 0.7, 0.6, 0.8, 0.4
    assert stats["last-rounds-test/acc-std"] == pytest.approx(math.sqrt(0.02))
    short = last_rounds(rows[:3])  # round 0 never counts
    assert short["last-rounds"] == 2 and short["last-rounds-test/acc"] == pytest.approx(0.55)
    assert math.isnan(last_rounds(rows[:1])["last-rounds-test/acc"])
    with pytest.raises(ValueError, match="count"):
        last_rounds(rows, 0)
