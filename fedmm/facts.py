"""Client facts by name: what a server-side component (a selection policy) asks every client to
measure, and the function that measures it (no torch, no flwr here).

A policy names the facts it needs (:meth:`SelectionPolicy.client_facts`); the train message asks
for them by name (:mod:`fedmm.protocol`), and the client computes each with the entry registered
under that name in :data:`CLIENT_FACTS` (:func:`register_client_fact`), next to the code it
measures (``imbalance-ratio`` in ``fedmm/objectives/pmr.py``). The client app names no objective.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fedmm.params import Interval
from fedmm.registry import Registry, registered_name

#: CMSFed's rho_k = Acc_first / Acc_second of the client's prototype classifiers.
IMBALANCE_RATIO = "imbalance-ratio"
#: The values rho_k can take (a ratio of accuracies); a reply outside it is rejected.
IMBALANCE_RATIO_VALID = Interval(float, 0.0, None, closed="left")
#: Any finite number (a fact that declares no range).
ANY_NUMBER = Interval(float, None, None)


#: ``(model, data, order) -> float``: how a client measures a fact.
Compute = Callable[[Any, Any, tuple[str, ...]], float]


@dataclass(frozen=True)
class ClientFact:
    """How a client measures one fact.

    Parameters
    ----------
    compute:
        ``(model, data, order) -> float``: the fact of ``model`` (all the groups of the modalities
        the client holds loaded) on the client's ``data``; ``order`` is the modality order the
        server sent (the policy's ``imbalance_order``, any length).
    before_training_in_update_pass:
        Measure it with the received model, before training, in the update pass (round 0), and with
        the trained model in later rounds (docs/methods/cmsfed.md §5.1, §5.5); ``False``: always after training.
    valid:
        The values the fact can take; the server rejects a reply whose value lies outside.
    """

    compute: Compute
    before_training_in_update_pass: bool = True
    valid: Interval = ANY_NUMBER


#: Fact name -> how a client measures it.
CLIENT_FACTS: Registry[ClientFact] = Registry("client fact")


def register_client_fact(
    name: str, *, before_training_in_update_pass: bool = True, valid: Interval = ANY_NUMBER
) -> Callable[[Compute], Compute]:
    """Function decorator: register ``compute(model, data, order) -> float`` as client fact ``name``
    (``@register_client_fact("majority-share", before_training_in_update_pass=False)``).

    Parameters
    ----------
    name:
        The fact's name, as a policy's ``client_facts`` asks for it.
    before_training_in_update_pass, valid:
        The fact's facts (:class:`ClientFact`).

    Returns
    -------
    A decorator that registers the function and returns it.
    """
    name = registered_name("register_client_fact", name)

    def register(compute: Compute) -> Compute:
        CLIENT_FACTS.add(name, ClientFact(compute, before_training_in_update_pass, valid))
        return compute

    return register
