"""Model state <-> Flower records, by parameter group; the per-key aggregation rule; array vetting.

Messages (their keys, the extras codec) are :mod:`fedmm.protocol`'s.

A group is read from a parameter's name (``encoders.acc.0.weight`` -> ``encoders.acc``), by the
one rule in :mod:`fedmm.groups`.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.common.constant import SType


def to_record(state: Mapping[str, Any], keys: Iterable[str] | None = None) -> ArrayRecord:
    """An ``ArrayRecord`` of ``state`` (torch tensors or numpy arrays), restricted to ``keys``."""
    keys = list(state) if keys is None else list(keys)
    return ArrayRecord({k: Array(_to_numpy(state[k])) for k in keys})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The record's arrays as numpy, by key."""
    return {k: array_numpy(v) for k, v in record.items()}


_NPY_MAGIC = b"\x93NUMPY"


def array_numpy(array: Array) -> np.ndarray:
    """``array.numpy()`` without ``np.load``'s header parsing (an ``ast.literal_eval`` per array,
    about 0.2 ms: most of the decode time of a small model's message): the same values, dtype and
    shape, as a writable copy. The payload is read directly only when its ``.npy`` header states
    exactly the ``Array``'s dtype and shape in C order and its length fits them; anything else
    (another format version, Fortran order, a header that disagrees) goes through ``array.numpy()``
    with its own checks and errors.

    Parameters
    ----------
    array:
        A Flower ``Array`` (``stype`` numpy.ndarray).
    """
    data = array.data
    if array.stype == SType.NUMPY and data[:6] == _NPY_MAGIC and data[6:7] in (b"\x01", b"\x02", b"\x03"):
        size = 2 if data[6] == 1 else 4
        header_len = int.from_bytes(data[8 : 8 + size], "little")
        start = 8 + size + header_len
        header = data[8 + size : start]
        try:
            dtype = np.dtype(array.dtype)
            shape = tuple(int(n) for n in array.shape)
        except (TypeError, ValueError):
            return array.numpy()
        count = math.prod(shape)
        if (
            not dtype.hasobject
            and f"'descr': '{dtype.str}'".encode() in header
            and b"'fortran_order': False" in header
            and f"'shape': {shape!r}".encode() in header
            and len(data) == start + count * dtype.itemsize
        ):
            return np.frombuffer(data, dtype=dtype, count=count, offset=start).reshape(shape).copy()
    return array.numpy()


def torch_state(record: ArrayRecord) -> dict[str, Any]:
    """``record.to_torch_state_dict()`` with :func:`array_numpy`'s decoding (the same tensors)."""
    import torch

    return {k: torch.from_numpy(array_numpy(v)) for k, v in record.items()}


def subset_record(record: ArrayRecord, keys: Iterable[str]) -> ArrayRecord:
    return ArrayRecord({k: record[k] for k in keys})


def non_finite_keys(record: ArrayRecord) -> list[str]:
    """Keys whose array holds NaN or an infinity (such a reply must never be averaged)."""
    out = []
    for k, v in record.items():
        a = array_numpy(v)
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            out.append(k)
    return out


class RecordMismatch(ValueError):
    """A record a client sent that the server cannot use; the message is the reason (one line)."""


def vet_arrays(
    record: ArrayRecord, global_state: Mapping[str, np.ndarray], expected: Collection[str]
) -> dict[str, np.ndarray]:
    """The arrays of a client's ``record`` as numpy, checked against the global model.

    Parameters
    ----------
    record:
        What the client uploaded.
    global_state:
        The current global arrays: every uploaded key must be one of them, with the same shape and
        dtype, so an average can never change the model's keys, shapes or dtypes.
    expected:
        The keys the client had to upload (its trained groups and the shared one): it must send
        exactly these.

    Raises :class:`RecordMismatch` naming the first problem: a key the global model lacks, a key
    outside ``expected``, a missing key, an array that cannot be read, a shape or dtype that
    differs from the global one, or NaN/inf values.
    """
    keys = list(record.keys())
    unknown = [k for k in keys if k not in global_state]
    if unknown:
        raise RecordMismatch(f"unknown parameters {unknown[:3]} (not in the global model)")
    unexpected = [k for k in keys if k not in expected]
    if unexpected:
        raise RecordMismatch(f"unexpected parameters {unexpected[:3]} (of groups it was not asked to train)")
    missing = [k for k in expected if k not in record]
    if missing:
        raise RecordMismatch(f"missing parameters {missing[:3]}")
    out = {}
    for k in keys:
        try:
            a = array_numpy(record[k])
        except Exception as err:  # noqa: BLE001 - any undecodable payload is the client's fault
            raise RecordMismatch(f"parameter {k!r} cannot be read ({type(err).__name__})") from None
        g = global_state[k]
        if a.shape != g.shape or a.dtype != g.dtype:
            raise RecordMismatch(
                f"parameter {k!r} has shape {a.shape} and dtype {a.dtype}; the global model's is {g.shape} {g.dtype}"
            )
        out[k] = a
    bad = [k for k, a in out.items() if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all()]
    if bad:
        raise RecordMismatch(f"non-finite values in {bad[:3]}")
    return out


def aggregate(
    global_state: Mapping[str, np.ndarray], contributions: Sequence[tuple[float, Mapping[str, np.ndarray]]]
) -> dict[str, np.ndarray]:
    """Modality-aware FedAvg: every key averaged over the contributions that contain it.

    Parameters
    ----------
    global_state:
        The current global arrays; a key no contribution contains keeps this value.
    contributions:
        ``(weight, arrays)`` per client, where ``weight`` is its number of examples and ``arrays``
        holds only the groups it trained.

    Integer buffers (batch-norm ``num_batches_tracked``) are averaged and rounded back.
    """
    sums: dict[str, np.ndarray] = {}
    weights: dict[str, float] = {}
    for weight, arrays in contributions:
        if weight <= 0:
            continue
        for k, a in arrays.items():
            if k not in global_state:
                raise KeyError(f"a client sent unknown parameter {k!r}")
            acc = sums.get(k)
            term = a.astype(np.float64) * weight
            sums[k] = term if acc is None else acc + term
            weights[k] = weights.get(k, 0.0) + weight
    out = {}
    for k, g in global_state.items():
        if k in sums:
            mean = sums[k] / weights[k]
            out[k] = (np.rint(mean) if np.issubdtype(g.dtype, np.integer) else mean).astype(g.dtype)
        else:
            out[k] = g
    return out


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.ascontiguousarray(value)
