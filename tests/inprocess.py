"""A Flower grid that delivers every message to fedmm's ClientApp in this process (no Ray).

Node ``n`` serves partition ``n - 1`` (or, with ``shuffle``, nodes get random ids, as in Flower's
simulation engine, and partition ids in the order the ids were drawn); replies come back in the order the messages were sent. It
runs the real server loop and the real client handlers, one after the other, so a small federation
runs in seconds and its numbers equal a Ray simulation's with the same seed. A handler that raises
gets the error reply Flower's simulation engine builds for it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp.client_app import ClientAppException
from flwr.common.constant import ErrorCode

from fedmm.clients.app import app


class InProcessGrid:
    """The ``Grid`` methods the round loop uses, answered by the ClientApp in-process.

    Parameters
    ----------
    num_nodes:
        Nodes ``1 .. num_nodes``, one per partition of the run's scenario.
    shuffle:
        Seed of random node ids (partition ``i``: the ``i``-th id drawn, not the ``i``-th smallest);
        ``None``: node ``n`` holds partition ``n - 1``.
    """

    def __init__(self, num_nodes: int, shuffle: int | None = None) -> None:
        self.num_nodes = num_nodes
        if shuffle is None:
            ids = list(range(1, num_nodes + 1))
        else:
            ids = [int(i) for i in np.random.default_rng(shuffle).choice(2**40, size=num_nodes, replace=False) + 1]
        self.partition_of_node = {node: p for p, node in enumerate(ids)}

    def get_node_ids(self) -> list[int]:
        return list(self.partition_of_node)

    def send_and_receive(self, messages: Iterable[Message], timeout: float | None = None) -> list[Message]:
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            context = Context(run_id=1, node_id=node, state=RecordDict(), run_config={},
                              node_config={"partition-id": self.partition_of_node[node],
                                           "num-partitions": self.num_nodes})
            try:
                replies.append(app(msg, context))
            except Exception as ex:  # Flower's engines turn a raised exception into an error reply
                wrapped = ClientAppException(str(ex))
                reason = f"{type(wrapped)}:<'{wrapped}'>"
                replies.append(Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg))
        return replies


def run_in_process(run, on_round=None, *, roster_from_scenario=True, shuffle=None):
    """Prepare ``run`` and run its federation on an :class:`InProcessGrid`; returns the round rows
    (needs the ``flower_identity`` fixture). ``roster_from_scenario``: as ``fedmm simulate`` (no
    discovery messages); ``False``: discovery by ``query`` messages, as a deployment."""
    from fedmm.server.loop import prepare, run_federation

    plan = dataclasses.replace(prepare(run), roster_from_scenario=roster_from_scenario)
    rows = []

    def record(row):
        rows.append(row)
        if on_round:
            on_round(plan, row)

    run_federation(InProcessGrid(len(plan.scenario.partitions), shuffle), plan, record)
    return rows


def simulate_in_process(run, out_dir=None, *, overwrite=False, roster_from_scenario=True, shuffle=None,
                        resume=None, on_round=None, **_):
    """``fedmm.simulation.simulate`` on an :class:`InProcessGrid` (for ``run_grid``'s
    ``simulate``; needs the ``flower_identity`` fixture): writes ``out_dir`` and returns the summary.
    ``resume``: a checkpoint to continue from."""
    from fedmm.server.loop import prepare, run_federation

    plan = prepare(run, out_dir, overwrite=overwrite or resume is not None)
    plan = dataclasses.replace(plan, roster_from_scenario=roster_from_scenario)
    return run_federation(InProcessGrid(len(plan.scenario.partitions), shuffle), plan, on_round, resume=resume)
