"""Which modalities each client holds."""

from __future__ import annotations

import numpy as np

MODES = ("all", "multi-ratio", "fractions", "missing-rate")


def parse_fractions(text: str, modalities: list[str]) -> dict[tuple[str, ...], float]:
    """``"acc=0.3,gyro=0.3,acc+gyro=0.4"`` -> ``{("acc",): 0.3, ("gyro",): 0.3, ("acc", "gyro"): 0.4}``.

    Subsets are returned in canonical modality order; fractions must be >= 0 and sum to 1.
    """
    out: dict[tuple[str, ...], float] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        subset, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"modality-fractions item {item!r} is not of the form subset=fraction (e.g. acc+gyro=0.4)")
        names = [m.strip() for m in subset.split("+") if m.strip()]
        unknown = [m for m in names if m not in modalities]
        if not names or unknown:
            raise ValueError(f"modality-fractions subset {subset!r} must name modalities of the dataset {modalities}")
        try:
            fraction = float(value)
        except ValueError:
            raise ValueError(f"modality-fractions value {value!r} of {subset!r} is not a number") from None
        if fraction < 0:
            raise ValueError(f"modality-fractions value of {subset!r} must be >= 0, got {fraction}")
        key = tuple(m for m in modalities if m in names)
        if key in out:
            raise ValueError(f"modality-fractions names the subset {'+'.join(key)!r} twice")
        out[key] = fraction
    if not out or abs(sum(out.values()) - 1.0) > 1e-6:
        raise ValueError(f"modality-fractions must sum to 1, got {sum(out.values()):.6g} from {text!r}")
    return out


def allocate_modalities(
    num_clients: int,
    modalities: list[str],
    *,
    mode: str,
    seed: int,
    multi_ratio: float = 1.0,
    fractions: dict[tuple[str, ...], float] | str | None = None,
    missing_rate: float = 0.0,
) -> list[tuple[str, ...]]:
    """The modalities of each client, each tuple in canonical order.

    Parameters
    ----------
    num_clients:
        Number of clients.
    modalities:
        The dataset's modalities in canonical order.
    mode:
        ``all``; ``multi-ratio`` (``round(multi_ratio * N)`` random clients hold everything, the rest
        are split as evenly as possible among the single modalities); ``fractions`` (explicit
        subsets, counts by largest remainder, shuffled); ``missing-rate`` (see below).
    seed:
        Seed of the draws.
    missing_rate:
        ``missing-rate`` mode: client ``k`` lacks modality ``m`` iff ``u[k, m] < missing_rate``, with
        ``u`` drawn from ``seed`` alone. The same ``u`` serves every rate, so the clients missing a
        modality at rate 0.1 are a subset of those missing it at 0.2. A client left with nothing
        keeps the modality with the largest ``u``.
    """
    if mode not in MODES:
        raise ValueError(f"allocation must be one of {list(MODES)}, got {mode!r}")
    rng = np.random.default_rng(seed)
    full = tuple(modalities)
    if mode == "all" or len(modalities) == 1:
        return [full] * num_clients
    if mode == "multi-ratio":
        if not 0 <= multi_ratio <= 1:
            raise ValueError(f"multi-ratio must be in [0, 1], got {multi_ratio}")
        order = rng.permutation(num_clients)
        n_multi = int(round(multi_ratio * num_clients))
        out: list[tuple[str, ...]] = [full] * num_clients
        for j, client in enumerate(order[n_multi:]):
            out[client] = (modalities[j % len(modalities)],)
        return out
    if mode == "fractions":
        if isinstance(fractions, str) or fractions is None:
            fractions = parse_fractions(fractions or "", modalities)
        subsets = list(fractions)
        exact = np.array([fractions[s] for s in subsets]) * num_clients
        counts = np.floor(exact).astype(int)
        for i in np.argsort(-(exact - counts), kind="stable")[: num_clients - counts.sum()]:
            counts[i] += 1
        assigned = [s for s, c in zip(subsets, counts) for _ in range(c)]
        return [assigned[i] for i in rng.permutation(num_clients)]
    if not 0 <= missing_rate < 1:
        raise ValueError(f"missing-rate must be in [0, 1), got {missing_rate}")
    u = rng.random((num_clients, len(modalities)))
    out = []
    for row in u:
        keep = tuple(m for m, v in zip(modalities, row) if v >= missing_rate)
        out.append(keep or (modalities[int(np.argmax(row))],))
    return out
