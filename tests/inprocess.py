"""Tests' shortcuts to the ``inline`` engine (:mod:`fedmm.inline`): the real server loop and the
real client handlers in this process, so a small federation runs in seconds and its numbers equal
a Ray simulation's with the same seed (both need the ``flower_identity`` fixture)."""

from __future__ import annotations

from fedmm.inline import InlineGrid


def run_in_process(run, on_round=None):
    """Prepare ``run`` and run its federation on an :class:`InlineGrid`; returns the round rows."""
    from fedmm.server.loop import prepare, run_federation

    plan = prepare(run)
    rows = []

    def record(row):
        rows.append(row)
        if on_round:
            on_round(plan, row)

    run_federation(InlineGrid(len(plan.scenario.partitions)), plan, record)
    return rows


def simulate_in_process(run, out_dir=None, *, overwrite=False, **_):
    """``fedmm.simulation.simulate`` on an :class:`InlineGrid` (for ``run_grid``'s ``simulate``):
    writes ``out_dir`` and returns the summary."""
    from fedmm.server.loop import prepare, run_federation

    plan = prepare(run, out_dir, overwrite=overwrite)
    return run_federation(InlineGrid(len(plan.scenario.partitions)), plan)
