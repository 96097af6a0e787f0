"""The ``inline`` engine: a Flower grid that hands every message to fedmm's ClientApp in this process.

Node ``n`` serves partition ``n - 1`` (or random node ids, see ``shuffle``). The grid runs the real
server loop and the real client handlers, one message after the other, in the calling thread: no
Ray, no actors, no serialisation between processes. A federation's numbers are the Ray engine's
with the same seed (the clients' work depends only on the run, the round and the partition); what
differs is the cost: nothing is started, so a short run ends sooner, but the clients train one after
the other, so on several cores Ray's parallel actors make a long run's rounds faster. A handler that
raises gets the error reply Flower's simulation engine builds for it, so the server sees the same
failures either way.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from uuid import uuid4

import numpy as np
from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp.client_app import ClientAppException
from flwr.common.constant import ErrorCode
from flwr.supercore.task_identity import TaskIdentity

from fedmm.server.stopping import Interrupted, StopRequest

#: The run id the inline engine gives its messages (there is no SuperLink to assign one).
INLINE_RUN_ID = 1


class InlineGrid:
    """The ``Grid`` methods the round loop uses, answered by the ClientApp in this process.

    Parameters
    ----------
    num_nodes:
        Nodes ``1 .. num_nodes``, one per partition of the run's scenario.
    stop:
        A stop request (Ctrl-C) checked before each message, so an interrupt ends a round of many
        clients within one client's work; ``None`` never stops.
    shuffle:
        Seed of random node ids, as Flower's simulation engine draws them (partition ``i``: the
        ``i``-th id drawn, not the ``i``-th smallest; tests of the node<->client map); ``None``:
        node ``n`` holds partition ``n - 1``.
    """

    def __init__(self, num_nodes: int, stop: StopRequest | None = None, shuffle: int | None = None) -> None:
        self.num_nodes = num_nodes
        self.stop = stop
        if shuffle is None:
            ids = list(range(1, num_nodes + 1))
        else:
            ids = [int(i) for i in np.random.default_rng(shuffle).choice(2**40, size=num_nodes, replace=False) + 1]
        self.partition_of_node = {node: p for p, node in enumerate(ids)}
        self._replies: dict[str, Message] = {}

    def get_node_ids(self) -> list[int]:
        return list(self.partition_of_node)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Answer ``messages`` now; their replies wait for :meth:`pull_messages`. Returns their ids."""
        ids = []
        for msg in messages:
            if self.stop is not None:
                self.stop.check()
            msg.metadata.__dict__["_message_id"] = message_id = str(uuid4())
            self._replies[message_id] = self._answer(msg)
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """The replies to ``message_ids`` (each handed out once)."""
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], timeout: float | None = None) -> list[Message]:
        """``Grid.send_and_receive``: the replies, in the order the messages were given."""
        return self.pull_messages(self.push_messages(messages))

    def _answer(self, msg: Message) -> Message:
        from fedmm.clients.app import app  # the client side imports the data and model stack
        from fedmm.clients.trust import in_process_clients

        node = msg.metadata.dst_node_id
        context = Context(
            run_id=INLINE_RUN_ID,
            node_id=node,
            state=RecordDict(),
            run_config={},
            node_config={"partition-id": self.partition_of_node[node], "num-partitions": self.num_nodes},
        )
        try:
            # the run's plugins are this process's own (fedmm.clients.trust); Ctrl-C interrupts the
            # client's work itself (fedmm.simulation.stop_on_signals), not only the next message
            with in_process_clients(), interruptible(self.stop):
                return app(msg, context)
        except Interrupted:
            raise
        except Exception as ex:  # Flower's engines turn a raised exception into an error reply
            wrapped = ClientAppException(str(ex))
            return Message(
                Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"{type(wrapped)}:<'{wrapped}'>"), reply_to=msg
            )


@contextmanager
def interruptible(stop: StopRequest | None) -> Iterator[None]:
    """While the body runs (a client's work in this thread), a stop request raises
    :class:`~fedmm.server.stopping.Interrupted` at once in it (``stop.interruptible``, read by the signal
    handler of :func:`fedmm.simulation.stop_on_signals`): the round under way is dropped anyway."""
    if stop is None:
        yield
        return
    stop.interruptible = True
    try:
        yield
    finally:
        stop.interruptible = False


@contextmanager
def server_identity() -> Iterator[None]:
    """While the body runs, messages built in this thread belong to run :data:`INLINE_RUN_ID` of
    the server (node 0), as a ServerApp's would; the previous identity comes back afterwards."""
    before = TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = INLINE_RUN_ID, 0, 1
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = before
