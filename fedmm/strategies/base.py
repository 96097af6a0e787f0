"""The one interface between the round loop and a server strategy (no flwr import at run time).

The loop (:func:`fedmm.server.loop.run_federation`) runs a round as explicit steps; each step is a
``configure_*`` that returns the messages to send (possibly none) and an ``aggregate_*`` that takes
their replies: discovery, the update pass, the Power-of-Choice probes, training, the facts of the
aggregated model, federated evaluation. Any class with these methods and attributes can be a
registered strategy's (:mod:`fedmm.strategies.recipes`); it need not subclass ModalityAwareFedAvg.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, Message, MetricRecord
    from flwr.serverapp import Grid

#: ``round -> extras`` for every client (objective state such as global prototypes).
ExtrasFn = Callable[[int], Mapping[str, Any]]
#: ``(round, [(num_examples, facts), ...])`` of the clients whose replies were accepted.
ObserveFn = Callable[[int, list[tuple[int, dict[str, Any]]]], None]


class RoundStrategy(Protocol):
    """What the round loop calls, in this order, every round (``arrays``: the global model)."""

    #: One ``clients.csv`` row per client outcome (ok, error, rejected: ..., no-reply, disconnected).
    client_rows: list[dict[str, Any]]
    #: The round's byte and time counts (``bytes-down``, ``bytes-up``, ``selection-seconds``, ...).
    round_stats: dict[str, float]

    def begin_round(self, server_round: int, arrays: ArrayRecord) -> None:
        """Start round ``server_round`` with the global model ``arrays`` (the counts start at 0)."""

    def configure_discovery(self, server_round: int, grid: Grid) -> list[Message]:
        """The queries to the nodes not seen before (the first call waits for enough nodes)."""

    def aggregate_discovery(self, server_round: int, replies: Iterable[Message]) -> None:
        """Register the nodes whose discovery reply is usable."""

    def configure_update_pass(self, arrays: ArrayRecord) -> list[Message]:
        """The next batch of training messages of the pass that gives a policy its first update
        vectors (round 0); the loop calls it (and :meth:`aggregate_update_pass` with the batch's
        replies) until it returns none, so a strategy without a pass returns ``[]``."""

    def aggregate_update_pass(self, replies: Iterable[Message]) -> None:
        """Hand a batch of the update pass's replies to the policy and the objective (the model stays)."""

    def configure_probe(self, server_round: int, arrays: ArrayRecord) -> list[Message]:
        """Loss probes the policy asks for before it selects (Power-of-Choice)."""

    def aggregate_probe(self, server_round: int, replies: Iterable[Message]) -> None:
        """Record the probed losses."""

    def configure_train(self, server_round: int, arrays: ArrayRecord) -> list[Message]:
        """Select, and build each selected node's training message."""

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The new global model and its training metrics; ``(None, None)`` without a usable reply."""

    def configure_global_model_facts(self, server_round: int, arrays: ArrayRecord) -> list[Message]:
        """Ask the round's accepted clients for facts of the aggregated model ``arrays``."""

    def aggregate_global_model_facts(self, server_round: int, replies: Iterable[Message]) -> None:
        """Hand those facts to the objective's server half."""

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord) -> list[Message]:
        """Federated evaluation messages (none when ``fraction-evaluate`` is 0)."""

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """The federated evaluation's metrics."""

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs (numpy arrays and JSON strings)."""

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`."""
