"""Progress of a run wherever it is watched: one plain line per round (files, ``nohup``, CI,
``flwr run --stream``, deployment logs), or a live bar in a terminal.

The round loop calls an ``on_round`` callback with each round's results row
(:data:`fedmm.server.loop.RoundCallback`); :func:`round_line` turns such a row into the line, and
:func:`watch` picks the display for a stream.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TextIO

ACC = "test/acc"
#: Validation accuracy, shown when the rows have it (a run with a validation split).
VAL_ACC = "val/acc"


def weak_modality(row: Mapping[str, Any]) -> tuple[str, float] | None:
    """The modality whose accuracy alone (``test/acc/<m>``) is lowest in ``row``, with that accuracy;
    ``None`` when the row has no finite one.

    Parameters
    ----------
    row:
        A round's results row.
    """
    alone = {k.rsplit("/", 1)[1]: float(v) for k, v in row.items() if k.startswith(f"{ACC}/") and _finite(v)}
    if not alone:
        return None
    name = min(alone, key=alone.__getitem__)
    return name, alone[name]


def round_line(row: Mapping[str, Any], total: int) -> str:
    """One plain line for a finished round: round, test (and validation) accuracy, the weak modality
    and its accuracy alone, the training loss and the round's seconds.

    Parameters
    ----------
    row:
        The round's results row (``round``, ``test/acc``, ``test/acc/<m>``, ``train/loss``, ``seconds``;
        ``val/acc`` when there is one).
    total:
        ``num-server-rounds``.

    Examples
    --------
    ``round  3/15  test/acc 0.9125  weak gyro 0.603  loss 0.4120  4.2 s``
    """
    width = len(str(total))
    parts = [f"round {int(row['round']):>{width}d}/{total}", f"test/acc {_number(row.get(ACC))}"]
    if VAL_ACC in row:
        parts.append(f"val/acc {_number(row[VAL_ACC])}")
    weak = weak_modality(row)
    if weak is not None:
        parts.append(f"weak {weak[0]} {weak[1]:.3f}")
    parts.append(f"loss {_number(row.get('train/loss'))}")
    parts.append(f"{float(row.get('seconds', 0.0)):.1f} s")
    return "  ".join(parts)


def print_rounds(total: int, stream: TextIO | None = None) -> Callable[[Mapping[str, Any]], None]:
    """An ``on_round`` callback that prints :func:`round_line` for every round and flushes (so a file,
    a pipe or Flower's log stream shows it at once).

    Parameters
    ----------
    total:
        ``num-server-rounds``.
    stream:
        Where to print (default: ``sys.stdout`` at the time of each call, which Flower's ServerApp
        process mirrors into ``flwr run --stream`` and its logs).
    """

    def on_round(row: Mapping[str, Any]) -> None:
        out = stream if stream is not None else sys.stdout
        print(round_line(row, total), file=out, flush=True)

    return on_round


@contextmanager
def watch(
    total: int, *, enabled: bool = True, stream: TextIO | None = None, live: bool | None = None
) -> Iterator[Callable[[Mapping[str, Any]], None] | None]:
    """The progress display of a run: yields its ``on_round`` callback (``None`` when disabled).

    Parameters
    ----------
    total:
        ``num-server-rounds``.
    enabled:
        ``False``: no display (``--quiet``).
    stream:
        The output (default ``sys.stdout``).
    live:
        A live bar (``True``) or plain lines (``False``); default: a live bar only when ``stream``
        is a terminal.
    """
    if not enabled:
        yield None
        return
    stream = stream if stream is not None else sys.stdout
    if live is None:
        live = _is_terminal(stream)
    if not live:
        yield print_rounds(total, stream)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("round"),
        MofNCompleteColumn(),
        BarColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        transient=False,
        console=Console(file=stream),
    )
    task = bar.add_task("starting...", total=total)

    def on_round(row: Mapping[str, Any]) -> None:
        mods = " ".join(f"{k.rsplit('/', 1)[1]}={v:.3f}" for k, v in row.items() if k.startswith(f"{ACC}/"))
        bar.update(task, completed=row["round"], description=f"{ACC}={row[ACC]:.3f} {mods}")

    bar.start()
    try:
        yield on_round
    finally:
        bar.stop()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or odd stream
        return False


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _number(value: Any) -> str:
    return f"{float(value):.4f}" if _finite(value) else "-"
