"""Message delivery in Flower's simulation engine, in one pass per look (``fedmm simulate`` on Ray).

Flower 1.41's engine finds the messages to hand to its workers by scanning every stored message
once per node, every 0.1 s; :func:`fast_delivery` swaps in :func:`deliver_messages`, which makes
one pass. It relies on Flower internals (pinned: ``flwr>=1.41,<1.42``) and falls back to Flower's
own extractor when they are missing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

#: Seconds between the simulation engine's looks for messages to deliver (Flower's own: 0.1).
DELIVERY_POLL = 0.1


def deliver_messages(state: Any, queue: Any, nodes_mapping: Mapping[int, Any], f_stop: threading.Event) -> None:
    """Flower's simulation engine's message extractor (``vce_api.add_messages_to_queue``) in one
    pass over the stored messages per look, instead of one scan of them per node: Flower's costs
    N x M checks every 0.1 s (N nodes, M stored messages), which made every round slower with N
    and the update pass (M = N) quadratic. The same checks run (each undelivered message once per
    look: expiry and federation, the state's own ``_check_stored_messages``), messages are marked
    delivered as Flower does, and they are queued in the order the server pushed them. A state
    without the in-memory store this relies on gets Flower's own extractor.

    Parameters
    ----------
    state:
        The SuperLink's link state (``InMemoryLinkState`` in a simulation).
    queue:
        The queue the engine's workers take messages from.
    nodes_mapping:
        The simulation's node ids (to their partition ids).
    f_stop:
        Set when the simulation stops.
    """
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.supercore.date import now

    store, lock = getattr(state, "message_ins_store", None), getattr(state, "lock", None)
    check = getattr(state, "_check_stored_messages", None)
    if not isinstance(store, dict) or lock is None or check is None:
        _FLOWER_EXTRACTOR.get(vce_api.__name__, vce_api.add_messages_to_queue)(state, queue, nodes_mapping, f_stop)
        return
    while not f_stop.is_set():
        with lock:
            waiting = {
                i for i, m in store.items() if m.metadata.delivered_at == "" and m.metadata.dst_node_id in nodes_mapping
            }
            if waiting:
                check(waiting)  # drops expired messages (Flower then answers them with an error)
            ready = [m for i, m in store.items() if i in waiting]
            stamp = now().isoformat()
            for msg in ready:
                msg.metadata.delivered_at = stamp
        for msg in ready:
            queue.put(msg)
        f_stop.wait(DELIVERY_POLL)


#: Flower's own extractor, while :func:`fast_delivery` has replaced it.
_FLOWER_EXTRACTOR: dict[str, Callable[..., None]] = {}


@contextmanager
def fast_delivery() -> Iterator[None]:
    """While the body runs, Flower's simulation engine delivers messages with
    :func:`deliver_messages` (the engine looks the function up when it starts)."""
    from flwr.server.superlink.fleet.vce import vce_api

    original = vce_api.add_messages_to_queue
    _FLOWER_EXTRACTOR[vce_api.__name__] = original
    vce_api.add_messages_to_queue = deliver_messages
    try:
        yield
    finally:
        vce_api.add_messages_to_queue = original
        _FLOWER_EXTRACTOR.pop(vce_api.__name__, None)
