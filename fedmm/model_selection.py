"""The round a run reports, chosen on the validation split: never on the test split.

``summary.json`` gets, for a run with a validation split (``validation = "auto"``):

- ``best-val/acc`` and ``best-val-round``: the training round (1 and later; the earliest of ties)
  with the highest multimodal validation accuracy;
- ``test/acc-at-best-val`` (and ``test/<metric>-at-best-val`` for every test column): the test
  numbers of that round's global model, the run's reported result;
- ``last-rounds-val/acc`` and ``last-rounds-val/acc-std``: mean and population std of the
  validation accuracy over the last rounds (as ``last-rounds-test/acc``).

``best-test/acc`` and ``best-round`` (the best round *on the test split*) stay in the summary
for comparison with older runs, labelled by ``oracle-keys``: an oracle, never for choosing anything.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

VAL_ACC = "val/acc"
#: The summary keys read from the test split's best round: reported, never used to select.
ORACLE_KEYS = ("best-test/acc", "best-round")


def best_on_validation(rounds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``best-val/acc``, ``best-val-round`` and every ``test/<metric>-at-best-val`` of the rounds;
    empty when the rounds have no validation accuracy (``validation = "off"``).

    Parameters
    ----------
    rounds:
        The run's rows of ``rounds.csv`` (round 0, the initial model, first). Round 0 is chosen only
        when no training round has a finite validation accuracy.
    """
    scored = [r for r in rounds if math.isfinite(float(r.get(VAL_ACC, math.nan)))]
    if not scored:
        return {}
    trained = [r for r in scored if int(r["round"]) >= 1] or scored
    best = max(trained, key=lambda r: float(r[VAL_ACC]))  # max keeps the first of ties: the earliest round
    out: dict[str, Any] = {"best-val/acc": float(best[VAL_ACC]), "best-val-round": int(best["round"])}
    out.update({f"{k}-at-best-val": float(v) for k, v in best.items() if k.startswith("test/")})
    return out


def last_rounds_val(rounds: Sequence[Mapping[str, Any]], count: int) -> dict[str, float]:
    """``last-rounds-val/acc`` and ``last-rounds-val/acc-std``: mean and population std of the
    validation accuracy over the last ``count`` training rounds; empty without a validation split.

    Parameters
    ----------
    rounds:
        The run's rows of ``rounds.csv``; round 0 is never counted.
    count:
        Rounds to average, at least 1.
    """
    if count < 1:
        raise ValueError(f"last_rounds_val: count must be at least 1, got {count}")
    if not any(VAL_ACC in r for r in rounds):
        return {}
    accs = [float(r[VAL_ACC]) for r in rounds if int(r["round"]) >= 1 and VAL_ACC in r][-count:]
    if not accs:
        return {"last-rounds-val/acc": math.nan, "last-rounds-val/acc-std": math.nan}
    mean = sum(accs) / len(accs)
    return {
        "last-rounds-val/acc": mean,
        "last-rounds-val/acc-std": math.sqrt(sum((a - mean) ** 2 for a in accs) / len(accs)),
    }
