"""Tests' shortcuts to the ``inline`` engine (:mod:`fedmm.inline`): the real server loop and the
real client handlers in this process, so a small federation runs in seconds and its numbers equal
a Ray simulation's with the same seed (both need the ``flower_identity`` fixture)."""

from __future__ import annotations

import dataclasses

from fedmm.inline import InlineGrid

#: A federation of two clients on a few synthetic rows, for tests of what happens around a run.
TWO_CLIENTS = [
    "dataset=synthetic",
    "dataset.num-train=40",
    "dataset.num-test=8",
    "partition=iid",
    "num-clients=2",
    "allocation=all",
    "clients-per-round=2",
    "local-epochs=1",
    "batch-size=8",
    "device=cpu",
    "seed=3",
]


def run_in_process(run, on_round=None, *, roster_from_scenario=True, shuffle=None):
    """Prepare ``run`` and run its federation on an :class:`InlineGrid`; returns the round rows.
    ``roster_from_scenario``: as ``fedmm simulate`` (no discovery messages); ``False``: discovery
    by ``query`` messages, as a deployment. ``shuffle``: random node ids (:class:`InlineGrid`)."""
    from fedmm.server.loop import run_federation
    from fedmm.server.plan import prepare

    plan = dataclasses.replace(prepare(run), roster_from_scenario=roster_from_scenario)
    rows = []

    def record(row):
        rows.append(row)
        if on_round:
            on_round(plan, row)

    run_federation(InlineGrid(len(plan.scenario.partitions), shuffle=shuffle), plan, record)
    return rows


def simulate_in_process(
    run, out_dir=None, *, overwrite=False, roster_from_scenario=True, shuffle=None, resume=None, on_round=None, **_
):
    """``fedmm.simulation.simulate`` on an :class:`InlineGrid` (for ``run_grid``'s ``simulate``):
    writes ``out_dir`` and returns the summary. ``resume``: a checkpoint to continue from."""
    from fedmm.server.loop import run_federation
    from fedmm.server.plan import prepare

    plan = prepare(run, out_dir, overwrite=overwrite or resume is not None)
    plan = dataclasses.replace(plan, roster_from_scenario=roster_from_scenario)
    return run_federation(InlineGrid(len(plan.scenario.partitions), shuffle=shuffle), plan, on_round, resume=resume)
