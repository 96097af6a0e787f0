"""Stopping a run: a signal (Ctrl-C's SIGINT, SIGTERM) sets a :class:`StopRequest`; the round loop
checks it between its steps and, through :class:`StoppableGrid`, while it waits for replies, and
raises :class:`Interrupted`."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterable
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid


class Interrupted(Exception):
    """The run was stopped by a signal (Ctrl-C's SIGINT, or SIGTERM): the round under way was dropped
    (not aggregated, written or checkpointed), so ``fedmm simulate --resume`` starts it again.

    Parameters
    ----------
    signum:
        The signal that stopped the run.
    last_round:
        The last finished (written and checkpointed) round; ``None`` when none finished.
    """

    def __init__(self, signum: int, last_round: int | None = None) -> None:
        self.signum, self.last_round = signum, last_round
        super().__init__(f"stopped by {self.signal_name}")

    @property
    def signal_name(self) -> str:
        """``SIGINT``, ``SIGTERM``, ..."""
        return signal.Signals(self.signum).name


class StopRequest:
    """Set from a signal handler (any thread may set it); the round loop checks it between its steps
    and while it waits for replies (:class:`StoppableGrid`), and raises :class:`Interrupted`."""

    def __init__(self) -> None:
        self._event = threading.Event()
        #: Set while a client works in the signal handler's thread (the inline engine): a stop then raises at once.
        self.interruptible = False
        self.signum: int | None = None

    def request(self, signum: int) -> None:
        """Ask the run to stop because of ``signum``; later requests keep the first signal."""
        if not self._event.is_set():
            self.signum = signum
            self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; ``True`` as soon as a stop is requested."""
        return self._event.wait(seconds)

    def check(self) -> None:
        """Raise :class:`Interrupted` when a stop was requested."""
        if self._event.is_set():
            raise Interrupted(self.signum or signal.SIGINT)


class StoppableGrid:
    """A ``Grid`` whose waits end within ``poll_interval`` seconds of a :class:`StopRequest`
    (raising :class:`Interrupted`); everything else is the wrapped grid's.

    Parameters
    ----------
    grid:
        The grid to wrap (the simulation's in-memory grid, a deployment's gRPC grid).
    stop:
        The stop request the waits watch.
    poll_interval:
        Seconds between pulls for replies.
    """

    def __init__(self, grid: Grid, stop: StopRequest, poll_interval: float = 0.1) -> None:
        self._grid, self._stop, self._poll_interval = grid, stop, poll_interval

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def get_node_ids(self) -> Iterable[int]:
        self._stop.check()
        return self._grid.get_node_ids()

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        """``Grid.send_and_receive``: push ``messages``, pull their replies until all came or
        ``timeout`` seconds passed (``None``: no limit); raises :class:`Interrupted` on a stop."""
        self._stop.check()
        pending = set(self._grid.push_messages(messages))
        end = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while True:
            pulled = list(self._grid.pull_messages(pending))
            replies.extend(pulled)
            pending.difference_update(m.metadata.reply_to_message_id for m in pulled)
            if not pending or (end is not None and time.monotonic() >= end):
                return replies
            if self._stop.wait(self._poll_interval):
                self._stop.check()
