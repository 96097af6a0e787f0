"""A run that collapsed: its accuracy fell far below its own best late in the run, or its held-out
loss grew while its training loss grew (optimisation broke down rather than overfitting).

:func:`fedmm.results.divergence` flags a training loss 10 times round 1's or a non-finite loss;
a method can break down well short of that (training loss up 4.5x, test loss 12, single rounds at
0.14 accuracy) and still end with a plausible final number. ``summary.json``'s ``collapsed`` holds
the first round a rule below fires and why, else ``false``. Both rules read the validation
columns when the run has them (``validation = "auto"``), else the test columns; the flag only
reports, it chooses nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

#: Accuracy collapse: a round among the last :data:`COLLAPSE_WINDOW` training rounds whose accuracy
#: is more than this far (absolute) below the best accuracy of the rounds before it.
COLLAPSE_DROP = 0.2
#: The last training rounds the accuracy rule looks at (the rounds a result is read from).
COLLAPSE_WINDOW = 5
#: Loss growth: a round whose training loss and held-out loss both exceed this many times their
#: lowest value in the training rounds before it,
LOSS_RISE = 2.0
#: and whose held-out loss is also above its lowest by more than this fraction of round 0's (the
#: initial model's, about ln(classes)): a held-out loss doubling from a small minimum (0.08 to 0.2
#: nats at accuracy 0.94) is the noise of a well-trained model, not a breakdown. A fraction, not
#: nats, so that the floor scales with the task (ln 2 = 0.69 for two classes, ln 10 = 2.3 for ten).
LOSS_FLOOR = 0.1


def _value(row: Mapping[str, Any], key: str) -> float:
    try:
        return float(row.get(key, math.nan))
    except (TypeError, ValueError):
        return math.nan


def held_out_prefix(rounds: Sequence[Mapping[str, Any]]) -> str:
    """``"val"`` when the rounds have validation columns, else ``"test"``."""
    return "val" if any("val/acc" in r for r in rounds) else "test"


def accuracy_collapse(
    rounds: Sequence[Mapping[str, Any]], *, drop: float = COLLAPSE_DROP, window: int = COLLAPSE_WINDOW
) -> dict[str, Any] | None:
    """The first of the last ``window`` training rounds whose held-out accuracy is more than ``drop``
    below the best of the rounds before it (round 0 included), with the reason; ``None`` if none.

    Parameters
    ----------
    rounds:
        The run's rows of ``rounds.csv``, round 0 first.
    drop:
        How far below its best (absolute accuracy) counts as a collapse.
    window:
        How many of the last training rounds are checked.
    """
    key = f"{held_out_prefix(rounds)}/acc"
    trained = [r for r in rounds if int(r["round"]) >= 1]
    late = {int(r["round"]) for r in trained[-window:]} if window > 0 else set()
    best, best_round = -math.inf, None
    for r in rounds:
        acc = _value(r, key)
        if not math.isfinite(acc):
            continue
        if int(r["round"]) in late and best_round is not None and acc < best - drop:
            return {
                "round": int(r["round"]),
                "rule": "accuracy",
                "reason": f"{key} {acc:.4g} is {best - acc:.4g} below the run's best {best:.4g} (round "
                f"{best_round}), more than {drop:g}, in the last {window} rounds",
            }
        if acc > best:
            best, best_round = acc, int(r["round"])
    return None


def loss_growth(
    rounds: Sequence[Mapping[str, Any]], *, rise: float = LOSS_RISE, floor: float = LOSS_FLOOR
) -> dict[str, Any] | None:
    """The first training round whose training loss and held-out loss (``val/loss``, else
    ``test/loss``) both exceed ``rise`` times their lowest value in the training rounds before it,
    the held-out loss also by more than ``floor`` times its round-0 value, with the reason; ``None``
    if none.

    Parameters
    ----------
    rounds:
        The run's rows of ``rounds.csv``; round 0 (no training loss) and rounds without a finite
        loss are skipped.
    rise:
        The growth factor (over each loss's running minimum) that counts.
    floor:
        How far the held-out loss must also rise over its minimum, as a fraction of its value at
        round 0 (the initial model); no floor when round 0 has no finite held-out loss.
    """
    key = f"{held_out_prefix(rounds)}/loss"
    initial = next((_value(r, key) for r in rounds if int(r["round"]) == 0), math.nan)
    margin = floor * initial if math.isfinite(initial) else 0.0
    low_train = low_held = math.inf
    for r in rounds:
        if int(r["round"]) < 1:
            continue
        train, held = _value(r, "train/loss"), _value(r, key)
        if not (math.isfinite(train) and math.isfinite(held)):
            continue
        if train > rise * low_train and held > rise * low_held and held - low_held > margin:
            return {
                "round": int(r["round"]),
                "rule": "loss",
                "reason": f"train/loss {train:.4g} and {key} {held:.4g} both grew over {rise:g} times their "
                f"lowest so far ({low_train:.4g}, {low_held:.4g}), {key} by over {margin:.4g} ({floor:g} x round 0's)",
            }
        low_train, low_held = min(low_train, train), min(low_held, held)
    return None


def collapse(rounds: Sequence[Mapping[str, Any]]) -> dict[str, Any] | bool:
    """``summary.json``'s ``collapsed``: the earliest hit of :func:`accuracy_collapse` and
    :func:`loss_growth` (``round``, ``rule``, ``reason``), or ``False``.

    Parameters
    ----------
    rounds:
        The run's rows of ``rounds.csv``, round 0 first.
    """
    hits = [h for h in (accuracy_collapse(rounds), loss_growth(rounds)) if h]
    return min(hits, key=lambda h: h["round"]) if hits else False
