"""fedmm's delivery of the simulation engine's messages (one pass per look) against Flower's rules."""

import queue
import threading
from types import SimpleNamespace

from fedmm.delivery import deliver_messages, fast_delivery


class FakeState:
    """The parts of Flower's ``InMemoryLinkState`` the delivery reads: the store, its lock, the check."""

    def __init__(self, messages, expired=()):
        self.message_ins_store = messages
        self.lock = threading.RLock()
        self.expired, self.checked = set(expired), []

    def _check_stored_messages(self, ids):
        with self.lock:
            self.checked.append(set(ids))
            for i in set(ids) & self.expired:
                del self.message_ins_store[i]


def _message(node, delivered=""):
    return SimpleNamespace(metadata=SimpleNamespace(dst_node_id=node, delivered_at=delivered))


def test_every_waiting_message_is_delivered_once_in_push_order_and_expired_ones_never():
    msgs = {
        "a": _message(5),
        "b": _message(7, delivered="earlier"),
        "c": _message(9),
        "d": _message(99),
        "e": _message(5),
        "f": _message(7),
    }
    state = FakeState(dict(msgs), expired={"c"})
    out, stop = queue.Queue(), threading.Event()
    worker = threading.Thread(target=deliver_messages, args=(state, out, {5: 0, 7: 1, 9: 2}, stop))
    worker.start()
    got = [out.get(timeout=30) for _ in range(3)]
    stop.set()
    worker.join(timeout=30)
    assert got == [msgs["a"], msgs["e"], msgs["f"]]  # node 99 is not in the simulation; b was delivered before
    assert out.empty()
    assert all(m.metadata.delivered_at for m in got) and msgs["d"].metadata.delivered_at == ""
    assert "c" not in state.message_ins_store and {"a", "c", "e", "f"} == state.checked[0]
    assert all("b" not in ids and "d" not in ids for ids in state.checked)


def test_a_state_without_the_in_memory_store_gets_flowers_own_extractor_and_the_patch_is_undone():
    from flwr.server.superlink.fleet.vce import vce_api

    original = vce_api.add_messages_to_queue
    calls = []
    vce_api.add_messages_to_queue = lambda *args: calls.append(args)
    try:
        with fast_delivery():
            assert vce_api.add_messages_to_queue is deliver_messages
            deliver_messages(object(), None, {}, threading.Event())
        assert len(calls) == 1 and vce_api.add_messages_to_queue is not deliver_messages
    finally:
        vce_api.add_messages_to_queue = original
