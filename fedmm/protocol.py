"""The messages server and clients exchange: every key, and the encode/decode of every message.

Server -> client (``query``, ``train``, ``evaluate``): a ``config`` record with the resolved run
config as TOML text (:data:`RUN_CONFIG`) and, for ``train``/``evaluate``, a :class:`Request`
(round, modalities to train, FedProx weight, the client facts asked for and their modality order,
the update pass's epoch override, or the ask for facts of the global model), the ``arrays`` of the
groups the node needs and the objective's ``extras``. Client -> server: ``info`` (discovery),
``arrays`` + ``metrics`` + ``facts`` (training), ``metrics`` (+ ``facts``) (evaluation).

Decoding a client's reply vets it: every ``decode_*`` reply function raises
:class:`~fedmm.records.RecordMismatch` naming what makes the reply unusable. No other module spells
a message key.

Why one module of this size: every message key and codec lives here by design: no other module
spells a key.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedmm.facts import ANY_NUMBER, CLIENT_FACTS, IMBALANCE_RATIO, IMBALANCE_RATIO_VALID
from fedmm.groups import keys_for_modalities
from fedmm.params import Interval
from fedmm.records import RecordMismatch, array_numpy, subset_record, vet_arrays

# records of a message's content
CONFIG, ARRAYS, EXTRAS, EXTRA_ARRAYS = "config", "arrays", "extras", "extra-arrays"
INFO, METRICS, FACTS = "info", "metrics", "facts"
# keys of the server's config record
RUN_CONFIG = "run-config"
SERVER_ROUND = "server-round"
MODALITIES = "modalities"
PROXIMAL_MU = "proximal-mu"
#: Names of the client facts a train message asks for (:data:`fedmm.facts.CLIENT_FACTS`), comma-joined.
CLIENT_FACTS_KEY = "client-facts"
#: The modality order the client facts are measured in (the policy's ``imbalance_order``), comma-joined.
IMBALANCE_ORDER = "imbalance-order"
#: The update pass's local epochs (overrides the run's).
LOCAL_EPOCHS = "local-epochs"
#: Config key of an ``evaluate`` message that asks for the objective's facts of the received global
#: model (``Objective.global_model_facts``) instead of an evaluation.
GLOBAL_MODEL_FACTS_KEY = "global-model-facts"
# keys of the client's info and metrics records
PARTITION_ID = "partition-id"
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS, SECONDS, LOSS, ACC = "train-loss", "seconds", "loss", "acc"
#: The values each reply metric can take (declared once, here); :func:`number` rejects a reply whose
#: value lies outside (an accuracy of 5.0, a negative evaluation loss: a broken or hostile node).
#: ``loss`` is the mean cross-entropy of an evaluation or a probe; a training loss is any finite
#: number (an objective's extra terms may be negative). Facts declare theirs in ``CLIENT_FACTS``.
VALID: dict[str, Interval] = {
    ACC: Interval(float, 0.0, 1.0),
    LOSS: Interval(float, 0.0, None, closed="left"),
    SECONDS: Interval(float, 0.0, None, closed="left"),
    IMBALANCE_RATIO: IMBALANCE_RATIO_VALID,
}


def _join(names: Sequence[str]) -> str:
    return ",".join(names)


def _split(text: Any) -> tuple[str, ...]:
    return tuple(str(text).split(",")) if text else ()


@dataclass(frozen=True)
class Request:
    """What a ``train`` or ``evaluate`` message asks of a node, besides the arrays it carries.

    Parameters
    ----------
    run_config:
        The resolved run config as TOML text.
    server_round:
        The round (0: the update pass; the round of the model for a loss probe).
    modalities:
        ``train``: the modalities to train; ``evaluate``: those the node holds.
    proximal_mu:
        ``train``: the FedProx weight (0: no proximal term); ``None`` for ``evaluate``.
    client_facts:
        Names of the client facts to measure and send back (:data:`fedmm.facts.CLIENT_FACTS`).
    order:
        The modality order of those facts (the policy's imbalance order, any length); empty when
        no fact is asked for.
    epochs:
        Local epochs instead of the run's (the update pass); ``None``: the run's.
    global_model_facts:
        ``evaluate``: report the objective's facts of the received model instead of evaluating it.
    partition_id:
        The scenario partition the node is to hold (a simulation whose server registered its roster
        from the scenario, :class:`~fedmm.strategies.roster.Roster`); ``None``: the node's own
        node-config ``partition-id``. A node with its own ``data-dir`` or ``modalities`` ignores it.
    extras:
        The objective's extras for the round (scalars, lists, numpy arrays).
    """

    run_config: str
    server_round: int
    modalities: tuple[str, ...]
    proximal_mu: float | None = None
    client_facts: tuple[str, ...] = ()
    order: tuple[str, ...] = ()
    epochs: int | None = None
    global_model_facts: bool = False
    partition_id: int | None = None
    extras: Mapping[str, Any] = field(default_factory=dict)

    def to_message(self, node: int, message_type: str, arrays: ArrayRecord, groups: Iterable[str]) -> Message:
        """The message to ``node`` carrying this request, the parameter groups of the modalities
        ``groups`` (and the shared ``fusion`` group) of ``arrays`` and the encoded extras (a fresh
        config record each time: messages never share one)."""
        config: dict[str, Any] = {
            RUN_CONFIG: self.run_config,
            SERVER_ROUND: self.server_round,
            MODALITIES: _join(self.modalities),
        }
        if self.proximal_mu is not None:
            config[PROXIMAL_MU] = self.proximal_mu
        if self.client_facts:
            config[CLIENT_FACTS_KEY] = _join(self.client_facts)
        if self.order:
            config[IMBALANCE_ORDER] = _join(self.order)
        if self.epochs is not None:
            config[LOCAL_EPOCHS] = self.epochs
        if self.global_model_facts:
            config[GLOBAL_MODEL_FACTS_KEY] = True
        if self.partition_id is not None:
            config[PARTITION_ID] = self.partition_id
        extra_config, extra_arrays = encode_extras(self.extras)
        payload = subset_record(arrays, keys_for_modalities(arrays.keys(), groups))
        content = RecordDict(
            {ARRAYS: payload, CONFIG: ConfigRecord(config), EXTRAS: extra_config, EXTRA_ARRAYS: extra_arrays}
        )
        return Message(content=content, dst_node_id=node, message_type=message_type)

    @classmethod
    def from_message(cls, msg: Message) -> Request:
        """The request a ``train`` or ``evaluate`` message carries (client side)."""
        config = msg.content[CONFIG]
        return cls(
            run_config=str(config[RUN_CONFIG]),
            server_round=int(config[SERVER_ROUND]),
            modalities=_split(config[MODALITIES]),
            proximal_mu=float(config[PROXIMAL_MU]) if PROXIMAL_MU in config else None,
            client_facts=_split(config.get(CLIENT_FACTS_KEY, "")),
            order=_split(config.get(IMBALANCE_ORDER, "")),
            epochs=int(config[LOCAL_EPOCHS]) if LOCAL_EPOCHS in config else None,
            global_model_facts=GLOBAL_MODEL_FACTS_KEY in config,
            partition_id=requested_partition(msg),
            extras=decode_extras(msg.content.get(EXTRAS), msg.content.get(EXTRA_ARRAYS)),
        )


def message_bytes(msg: Message, *, extras: bool) -> int:
    """Bytes of the arrays a server message carries (with the extras' arrays when ``extras``)."""
    return msg.content[ARRAYS].count_bytes() + (msg.content[EXTRA_ARRAYS].count_bytes() if extras else 0)


def run_config_text(msg: Message) -> str:
    """The run config (TOML text) every server message carries."""
    return str(msg.content[CONFIG][RUN_CONFIG])


def requested_partition(msg: Message) -> int | None:
    """The partition id a server message asks the node to hold (:attr:`Request.partition_id`), or
    ``None`` when it names none; raises ``ValueError`` when the value is not an integer (the node
    vets its range against its ``num-partitions``)."""
    value = msg.content[CONFIG].get(PARTITION_ID)
    if value is None:
        return None
    if not _is_int(value):
        raise ValueError(f"the server's message names {PARTITION_ID} {value!r}, not an integer")
    return int(value)


# -- discovery ---------------------------------------------------------------------------------------
def query_message(node: int, run_config: str, message_type: str) -> Message:
    """The discovery message to ``node`` (``message_type``: Flower's ``query``)."""
    return Message(
        content=RecordDict({CONFIG: ConfigRecord({RUN_CONFIG: run_config})}),
        dst_node_id=node,
        message_type=message_type,
    )


def info_reply(msg: Message, partition_id: int, modalities: Sequence[str], num_examples: int) -> Message:
    """A node's answer to discovery: its partition, held modalities and number of examples."""
    info = ConfigRecord({PARTITION_ID: partition_id, MODALITIES: _join(modalities), NUM_EXAMPLES: num_examples})
    return Message(RecordDict({INFO: info}), reply_to=msg)


@dataclass(frozen=True)
class ClientInfo:
    """A vetted discovery reply: the node's partition id, held modalities, number of examples."""

    partition_id: int
    modalities: tuple[str, ...]
    num_examples: int


def decode_info(reply: Message, num_partitions: int | None, known: Collection[str]) -> ClientInfo:
    """The :class:`ClientInfo` of a discovery reply; raises :class:`RecordMismatch` when its ``info``
    lacks one, the partition id is not in ``0 .. num_partitions - 1`` (``None``: not negative), a
    modality is not in ``known`` (the global model's; empty: any) or the count is not positive."""
    info = reply.content.get(INFO)
    if not isinstance(info, ConfigRecord):
        raise RecordMismatch(f"has no {INFO!r} record")
    pid, mods, n = info.get(PARTITION_ID), info.get(MODALITIES), info.get(NUM_EXAMPLES)
    if not _is_int(pid) or not 0 <= pid < (num_partitions or math.inf):
        top = f"0..{num_partitions - 1}" if num_partitions else "0 or more"
        raise RecordMismatch(f"names {PARTITION_ID} {pid!r}, not an integer in {top}")
    held = _split(mods) if isinstance(mods, str) else ()
    if not held or (known and not set(held) <= set(known)):
        raise RecordMismatch(f"names {MODALITIES} {mods!r}, not a subset of {','.join(sorted(known))}")
    if not _is_int(n) or n < 1:
        raise RecordMismatch(f"names {NUM_EXAMPLES} {n!r}, not a positive integer")
    return ClientInfo(int(pid), held, int(n))


# -- training ----------------------------------------------------------------------------------------
def train_reply(
    msg: Message, arrays: ArrayRecord, num_examples: int, loss: float, seconds: float, facts: Mapping[str, Any]
) -> Message:
    """A node's training reply: its trained groups, metrics and (when any) facts."""
    metrics = MetricRecord({NUM_EXAMPLES: num_examples, TRAIN_LOSS: loss, SECONDS: seconds})
    content = RecordDict({ARRAYS: arrays, METRICS: metrics})
    if facts:
        content[FACTS] = MetricRecord(dict(facts))
    return Message(content, reply_to=msg)


@dataclass
class TrainReply:
    """A vetted training reply."""

    num_examples: int
    loss: float
    seconds: float
    arrays: dict[str, np.ndarray]
    facts: dict[str, Any]


def decode_train_reply(
    reply: Message,
    *,
    limit: float,
    global_state: Mapping[str, np.ndarray],
    expected: Collection[str],
    client_facts: Collection[str] = (),
) -> TrainReply:
    """A training reply as a :class:`TrainReply`; raises :class:`RecordMismatch` naming what makes it
    unusable: metrics missing or not finite numbers, ``num-examples`` outside ``1 .. limit`` (what
    the node reported at discovery), facts that are not numbers (the imbalance ratio and the
    ``client_facts`` asked for: not one finite number), or arrays that do not match the global
    model's ``expected`` keys exactly (:func:`~fedmm.records.vet_arrays`)."""
    values = metrics_of(reply)
    num_examples = examples(values, limit)
    loss = number(values, TRAIN_LOSS)
    seconds = number(values, SECONDS, required=False)
    facts = facts_of(reply)
    for name in dict.fromkeys((IMBALANCE_RATIO, *client_facts)):
        if name in facts:
            facts[name] = number(facts, name, valid=CLIENT_FACTS.get(name).valid if name in CLIENT_FACTS else None)
    record = reply.content.get(ARRAYS)
    if not isinstance(record, ArrayRecord):
        raise RecordMismatch(f"the reply has no {ARRAYS!r} record")
    return TrainReply(
        num_examples, loss, 0.0 if seconds is None else seconds, vet_arrays(record, global_state, expected), facts
    )


def reply_bytes(reply: Message) -> int:
    """Bytes of the arrays a (vetted) training reply uploads."""
    return reply.content[ARRAYS].count_bytes()


# -- evaluation, probes, global-model facts ------------------------------------------------------------
def evaluate_reply(msg: Message, num_examples: int, loss: float, acc: float) -> Message:
    """A node's evaluation of the received model on its own data."""
    return Message(
        RecordDict({METRICS: MetricRecord({NUM_EXAMPLES: num_examples, LOSS: loss, ACC: acc})}), reply_to=msg
    )


def model_facts_reply(msg: Message, num_examples: int, facts: Mapping[str, Any]) -> Message:
    """A node's facts of the received global model (and its number of examples)."""
    content = RecordDict({METRICS: MetricRecord({NUM_EXAMPLES: num_examples})})
    if facts:
        content[FACTS] = MetricRecord(dict(facts))
    return Message(content, reply_to=msg)


def decode_evaluation(reply: Message, limit: float) -> tuple[int, float, float]:
    """``(num-examples, acc, loss)`` of an evaluation reply (:class:`RecordMismatch` when unusable)."""
    values = metrics_of(reply)
    return examples(values, limit), number(values, ACC), number(values, LOSS)


def decode_loss(reply: Message) -> float:
    """The local loss of a Power-of-Choice probe's reply (:class:`RecordMismatch` when unusable)."""
    return number(metrics_of(reply), LOSS)


def decode_model_facts(reply: Message, limit: float) -> tuple[int, dict[str, Any]]:
    """``(num-examples, facts)`` of a reply with facts of the global model (:class:`RecordMismatch`)."""
    return examples(metrics_of(reply), limit), facts_of(reply)


# -- vetting -----------------------------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number(
    values: Mapping[str, Any], key: str, *, required: bool = True, valid: Interval | None = None
) -> float | None:
    """``values[key]`` as a finite float; ``None`` when absent and not ``required``; raises
    :class:`RecordMismatch` when it is missing (and required), not a number, not finite, or outside
    ``valid`` (default: the key's range in :data:`VALID`, any number for a key without one)."""
    if key not in values:
        if required:
            raise RecordMismatch(f"the reply has no {key!r}")
        return None
    value = values[key]
    if not _is_number(value) or not math.isfinite(value):
        raise RecordMismatch(f"{key!r} is {value!r}, not a finite number")
    valid = valid or VALID.get(key, ANY_NUMBER)
    if valid.violation(float(value)) is not None:
        raise RecordMismatch(f"{key!r} is {value!r}, outside its valid range {valid.describe()}")
    return float(value)


def examples(values: Mapping[str, Any], limit: float) -> int:
    """``num-examples`` of a reply: an integer from 1 to ``limit``, what the node reported at
    discovery (:class:`RecordMismatch` otherwise, so no client can outweigh its data)."""
    n = number(values, NUM_EXAMPLES)
    if n != int(n) or not 1 <= n <= limit:
        raise RecordMismatch(
            f"{NUM_EXAMPLES} {values[NUM_EXAMPLES]!r} is not an integer in 1..{limit} "
            "(the examples it reported at discovery)"
        )
    return int(n)


def metrics_of(reply: Message) -> MetricRecord:
    """The reply's ``metrics`` record (:class:`RecordMismatch` when it has none)."""
    metrics = reply.content.get(METRICS)
    if not isinstance(metrics, MetricRecord):
        raise RecordMismatch(f"the reply has no {METRICS!r} record")
    return metrics


def facts_of(reply: Message) -> dict[str, Any]:
    """The reply's ``facts`` (empty when it has none); raises :class:`RecordMismatch` when a value
    is not a number or a list of numbers."""
    facts = reply.content.get(FACTS)
    if facts is None:
        return {}
    if not isinstance(facts, (MetricRecord, ConfigRecord)):
        raise RecordMismatch(f"the reply's {FACTS!r} is not a record of numbers")
    out = dict(facts)
    for k, v in out.items():
        if not all(_is_number(x) for x in (v if isinstance(v, list) else [v])):
            raise RecordMismatch(f"fact {k!r} is {str(v)[:40]!r}, not a number or a list of numbers")
    return out


# -- extras --------------------------------------------------------------------------------------------
def encode_extras(extras: Mapping[str, Any]) -> tuple[ConfigRecord, ArrayRecord]:
    """Split objective extras into a ``ConfigRecord`` (scalars, strings, lists) and an
    ``ArrayRecord`` (numpy arrays)."""
    config, arrays = {}, {}
    for k, v in extras.items():
        if isinstance(v, np.ndarray):
            arrays[k] = Array(np.ascontiguousarray(v))
        elif isinstance(v, (list, tuple)):
            config[k] = list(v)
        else:
            config[k] = v
    return ConfigRecord(config), ArrayRecord(arrays)


def decode_extras(config: ConfigRecord | None, arrays: ArrayRecord | None) -> dict[str, Any]:
    """The extras :func:`encode_extras` split, back in one dict."""
    out: dict[str, Any] = dict(config or {})
    out.update({k: array_numpy(v) for k, v in (arrays or {}).items()})
    return out
