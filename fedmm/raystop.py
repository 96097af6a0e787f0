"""Ctrl-C during a Ray simulation, bounded: once the run's results are final, the clients still
training are stopped instead of waited for.

When the server loop stops (:class:`fedmm.server.stopping.Interrupted`), Flower's simulation engine
waits for every message its actors are processing before it shuts Ray down: on a loaded machine
that is a whole client's training, tens of seconds. :class:`ActorReaper` records the engine's Ray
backend (Flower 1.41's ``RayBackend``, whose actor pool this reads: ``flwr`` is pinned to 1.41.x)
and, called after the results are written, kills its actors with ``ray.kill``: the waits end at
once (the dropped round's replies are not used anyway), the engine's workers return, and
``run_simulation`` shuts Ray down as usual. Flower's error log lines for the killed tasks are
silenced: the run's one message is the CLI's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class ActorReaper:
    """The Ray backends the simulation engine builds while :meth:`recording` is active, and a way to
    kill their actors."""

    def __init__(self) -> None:
        self.backends: list[Any] = []
        self.reaped = False
        #: Set once the engine has returned: nothing is left to kill.
        self.closed = False

    @contextmanager
    def recording(self) -> Iterator[ActorReaper]:
        """While the body runs, every ``RayBackend.build`` records its backend here."""
        from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

        original = RayBackend.build
        reaper = self

        def build(backend: Any, *args: Any, **kwargs: Any) -> Any:
            reaper.backends.append(backend)
            return original(backend, *args, **kwargs)

        RayBackend.build = build
        try:
            yield self
        finally:
            RayBackend.build = original

    def kill_actors(self) -> int:
        """Kill every actor of the recorded backends (busy and idle); returns how many. The engine's
        pending ``ray.get`` calls then fail at once, and its error logs are silenced."""
        import ray

        if self.closed:
            return 0
        logging.getLogger("flwr").setLevel(logging.CRITICAL)  # the killed tasks' errors are expected
        killed = 0
        for backend in self.backends:
            pool = getattr(backend, "pool", None)
            if pool is None:
                continue
            actors = [*list(getattr(pool, "_future_to_actor", {}).values()), *list(getattr(pool, "pool", []))]
            for actor in actors:
                try:
                    ray.kill(actor, no_restart=True)
                    killed += 1
                except Exception:  # noqa: BLE001  (already dead, Ray shutting down)
                    pass
        self.reaped = True
        return killed
