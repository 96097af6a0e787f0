"""The federated round loop: select and train, aggregate, evaluate centrally, record.

It follows Flower's ``Strategy.start`` step by step and adds what ``start`` has no hook for:
a results row per round, the clients table, a progress display and objective server state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, Message
from flwr.serverapp import Grid

from fedmm.checkpoint import Checkpoint, config_digest, prefixed, save_checkpoint, unprefixed, unreadable_state
from fedmm.diagnostics import round_diagnostics
from fedmm.protocol import NUM_EXAMPLES
from fedmm.provenance import software
from fedmm.records import from_record, to_record, torch_state
from fedmm.results import ResultsWriter, divergence, summarize, write_interrupted, write_summary
from fedmm.server.plan import Plan, build_strategy
from fedmm.server.stopping import Interrupted, StoppableGrid, StopRequest
from fedmm.strategies.base import RoundStrategy
from fedmm.training import evaluate, resolve_device

log = logging.getLogger("fedmm")

#: A run stops with status ``failed`` after this many consecutive rounds without a usable reply
#: (every selected client failed, was rejected or did not answer): retrying cannot help then.
MAX_FAILED_ROUNDS = 3

#: Called after every round with the round's results row (progress displays, tests).
RoundCallback = Callable[[dict[str, Any]], None]


def exchange(grid: Grid, messages: list[Message], timeout: float) -> list[Message]:
    """Send ``messages`` and wait (at most ``timeout`` seconds) for their replies; none to send, none
    to wait for."""
    return list(grid.send_and_receive(messages, timeout=timeout)) if messages else []


def restore_state(plan: Plan, strategy: RoundStrategy, checkpoint: Checkpoint) -> None:
    """Load ``checkpoint``'s server state into ``strategy`` (its policy) and the objective; garbage
    values are a ``ValueError`` naming the checkpoint file (:func:`fedmm.checkpoint.unreadable_state`).

    Parameters
    ----------
    plan:
        The run's plan (its objective, and its ``out_dir`` named in the error).
    strategy:
        The run's strategy, built for ``plan``.
    checkpoint:
        The checkpoint the run resumes from.
    """
    try:
        strategy.load_state_dict(unprefixed("strategy-state.", checkpoint.state))
        plan.objective.load_server_state(unprefixed("objective.", checkpoint.state))
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as err:
        raise unreadable_state(plan.out_dir or Path("."), err) from None


def train_messages(
    strategy: RoundStrategy, server_round: int, arrays: ArrayRecord, grid: Grid, timeout: float
) -> list[Message]:
    """The steps of a round before training, each one exchange with the nodes: discovery of new
    nodes, the update pass (round 0 of an update-vector policy), the loss probes (Power-of-Choice);
    then the round's training messages."""
    strategy.begin_round(server_round, arrays)
    strategy.aggregate_discovery(
        server_round, exchange(grid, strategy.configure_discovery(server_round, grid), timeout)
    )
    while update_pass := strategy.configure_update_pass(arrays):  # in batches, until none is left
        strategy.aggregate_update_pass(exchange(grid, update_pass, timeout))
    strategy.aggregate_probe(server_round, exchange(grid, strategy.configure_probe(server_round, arrays), timeout))
    return strategy.configure_train(server_round, arrays)


def run_federation(
    grid: Grid,
    plan: Plan,
    on_round: RoundCallback | None = None,
    resume: Checkpoint | None = None,
    stop: StopRequest | None = None,
) -> dict[str, Any]:
    """Run ``num-server-rounds`` rounds on ``grid``; returns the summary (also written to disk).

    With an output directory, the server checkpoints after every round (:mod:`fedmm.checkpoint`);
    ``resume`` continues from such a checkpoint: model, strategy, policy and objective state come
    back, the tables keep their finished rounds, and the run goes on with the next round. A run
    that raises (an interrupt, a crash) leaves ``summary.json`` with status ``interrupted``. After
    :data:`MAX_FAILED_ROUNDS` consecutive rounds without a usable reply the run stops: the summary
    has status ``failed``, the ``reason`` and the ``first-client-error`` of those rounds (the
    finished rounds and the checkpoint stay written).

    With ``stop``, a stop request (Ctrl-C, SIGTERM) ends the run within a fraction of a second of
    the next wait for replies: it raises :class:`Interrupted` and drops the round under way (not
    aggregated, not written, not checkpointed), so a resumed run starts that round again.
    """
    run = plan.run
    if stop is not None:
        grid = StoppableGrid(grid, stop)
    strategy = build_strategy(plan)
    device = resolve_device(run.device)
    model = plan.model.to(device)
    first_round = 0
    if resume is not None:
        model.load_state_dict({k: torch.from_numpy(v) for k, v in resume.model.items()})
        restore_state(plan, strategy, resume)
        first_round = resume.server_round + 1
    writer = None
    if plan.out_dir:
        writer = ResultsWriter(plan.out_dir, run, resume_after=resume.server_round if resume else None)
    arrays = to_record(model.state_dict())
    digest = config_digest(run.to_toml())  # recorded in every checkpoint (resume checks it)
    rows: list[dict[str, Any]] = writer.rounds if writer else []
    diverged: list[dict[str, Any]] = []  # the first divergence found, once logged

    def record(server_round: int, seconds: float, stats: dict[str, float], clients_from: int) -> None:
        metrics = evaluate(model, plan.dataset.test, plan.objective, device=device)
        row = {"round": server_round, **{f"test/{k}": v for k, v in metrics.items()}}
        if plan.dataset.val is not None:  # the validation split (validation = "auto"): what selects rounds
            row.update(
                {f"val/{k}": v for k, v in evaluate(model, plan.dataset.val, plan.objective, device=device).items()}
            )
        row.update(round_diagnostics(model, plan.dataset, plan.objective, device=device))  # competition's
        row.update({**stats, "seconds": seconds})
        if writer:
            writer.add_round(row, strategy.client_rows[clients_from:])
            save_checkpoint(
                plan.out_dir,
                Checkpoint(
                    server_round,
                    from_record(arrays),
                    {
                        **prefixed("strategy-state.", strategy.state_dict()),
                        **prefixed("objective.", plan.objective.server_state()),
                    },
                    config_sha256=digest,
                ),
            )
        else:
            rows.append(row)
        if not diverged and (hit := divergence(rows)):
            diverged.append(hit)
            log.warning(
                "round %d: training diverged: %s (summary.json records it as diverged)", hit["round"], hit["reason"]
            )
        if on_round:
            on_round(row)

    meta = {
        "dataset": run.dataset,
        "strategy": run.strategy,
        "objective": run.objective,
        "selection": run.selection,
        "software": software(),
    }
    failed_rounds: list[int] = []
    failure: dict[str, Any] | None = None
    try:
        if first_round == 0:
            # the strategy's initial counts first (a simulated clock's sim-seconds/sim-clock at 0)
            record(0, 0.0, {**strategy.round_stats, "train/loss": float("nan"), "bytes-up": 0.0, "bytes-down": 0.0}, 0)
        for server_round in range(max(first_round, 1), run.num_server_rounds + 1):
            if stop is not None:
                stop.check()
            started = time.perf_counter()
            clients_from = len(strategy.client_rows)
            messages = train_messages(strategy, server_round, arrays, grid, run.round_timeout)
            new_arrays, metrics = strategy.aggregate_train(server_round, exchange(grid, messages, run.round_timeout))
            failed_rounds = [*failed_rounds, server_round] if new_arrays is None else []
            if new_arrays is not None:
                arrays = new_arrays
                model.load_state_dict(torch_state(arrays))
                if plan.objective.observes_global_model:
                    asks = strategy.configure_global_model_facts(server_round, arrays)
                    strategy.aggregate_global_model_facts(server_round, exchange(grid, asks, run.round_timeout))
            stats = _round_stats(strategy, server_round, clients_from)
            stats.update({k: float(v) for k, v in dict(metrics or {}).items() if k != NUM_EXAMPLES})
            eval_messages = strategy.configure_evaluate(server_round, arrays)
            if eval_messages:
                replies = exchange(grid, eval_messages, run.round_timeout)
                stats.update(dict(strategy.aggregate_evaluate(server_round, replies) or {}))
            if stop is not None:
                stop.check()  # a stop during the round's last steps drops it too
            record(server_round, time.perf_counter() - started, stats, clients_from)
            if len(failed_rounds) >= MAX_FAILED_ROUNDS:
                failure = _failure(strategy, failed_rounds)
                break
    except BaseException as err:
        if writer:
            write_interrupted(plan.out_dir, rows, f"{type(err).__name__}: {err}")
            writer.close("interrupted")
        if isinstance(err, Interrupted):
            err.last_round = int(rows[-1]["round"]) if rows else None
        raise
    if failure is not None:
        summary = summarize(rows, {**meta, **failure})
        if writer:
            write_summary(plan.out_dir, summary)
            writer.close("failed")
        return summary
    summary = summarize(rows, {**meta, "status": "completed"})
    if writer:
        writer.finish(model.state_dict(), summary)
    return summary


def _failure(strategy: RoundStrategy, rounds: list[int]) -> dict[str, Any]:
    """The ``status``/``reason``/``first-client-error`` summary fields of a run stopped after the
    failed ``rounds``; the error is the first client outcome of those rounds that is not ``ok``,
    cut to the message the client raised (one line)."""
    outcomes = [r for r in strategy.client_rows if r["round"] in rounds and r["status"] != "ok"]
    first = outcomes[0] if outcomes else None
    error = (
        f"node {first['node-id']} (partition {first['partition-id']}): {client_error_text(first['status'])}"
        if first
        else "no client was selected"
    )
    reason = f"no usable client reply in {len(rounds)} consecutive rounds ({rounds[0]}-{rounds[-1]})"
    return {"status": "failed", "reason": reason, "first-client-error": error}


def client_error_text(status: str) -> str:
    """The message a client raised, out of a ``clients.csv`` status such as ``error: <reason>``.

    Flower's engines wrap a ClientApp exception as ``<class ...>:<'... Message: <text>'>`` (Ray
    adds the remote traceback); this keeps ``<text>``'s first line, or the last line of anything else.

    Parameters
    ----------
    status:
        A client outcome: ``error: ...``, ``rejected: ...``, ``no-reply`` or ``disconnected``.
    """
    marker = "Message: "
    if marker in status:
        first = (status.rsplit(marker, 1)[1].strip().splitlines() or [""])[0]
        return "error: " + first.removesuffix("'>")
    lines = [line.strip() for line in status.strip().splitlines() if line.strip()]
    return lines[-1] if lines else status


def _round_stats(strategy: RoundStrategy, server_round: int, clients_from: int) -> dict[str, float]:
    """The strategy's byte and time counts plus this round's client outcomes (the rows of the
    update pass before round 1 are round 0)."""
    rows = [r for r in strategy.client_rows[clients_from:] if r["round"] == server_round]
    stats = dict(strategy.round_stats)
    stats.setdefault("train/loss", float("nan"))
    stats["clients-ok"] = sum(r["status"] == "ok" for r in rows)
    stats["clients-failed"] = sum(r["status"] != "ok" for r in rows)
    return stats
