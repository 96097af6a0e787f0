"""Split train rows among clients: natural (one client per group), IID, or Dirichlet label skew."""

from __future__ import annotations

import numpy as np

SCHEMES = ("natural", "iid", "dirichlet")
#: ``partition = "auto"`` on a dataset without natural clients: Dirichlet label skew over this many
#: clients when ``num-clients`` is 0 (the FedCMI/CMSFed papers' federation size).
AUTO_NUM_CLIENTS = 20


def resolve_partition(scheme: str, num_clients: int | None, has_groups: bool) -> tuple[str, int | None]:
    """The scheme and client count that ``partition = "auto"`` stands for; any other scheme as given.

    Parameters
    ----------
    scheme:
        ``auto``, or one of :data:`SCHEMES` (returned unchanged with ``num_clients``).
    num_clients:
        The configured number of clients (``None``/0: not set).
    has_groups:
        Whether the dataset has natural clients (``Dataset.train_groups``).

    Returns
    -------
    tuple
        ``("natural", num_clients)`` when the dataset has natural clients, else ``("dirichlet",
        num_clients or AUTO_NUM_CLIENTS)``.
    """
    if scheme != "auto":
        return scheme, num_clients
    if has_groups:
        return "natural", num_clients
    return "dirichlet", num_clients or AUTO_NUM_CLIENTS


def partition_note(dataset: str, scheme: str, num_clients: int | None, has_groups: bool, alpha: float) -> str | None:
    """The line a run prints once when ``partition = "auto"`` chose a split for a dataset without
    natural clients (``None`` otherwise: natural clients need no note).

    Parameters
    ----------
    dataset:
        The dataset's registry name.
    scheme, num_clients:
        The configured ``partition`` and ``num-clients``.
    has_groups:
        Whether the dataset has natural clients.
    alpha:
        ``dirichlet-alpha``.
    """
    resolved, clients = resolve_partition(scheme, num_clients, has_groups)
    if scheme != "auto" or resolved == "natural":
        return None
    return (
        f"partition: {dataset} has no natural clients, so partition='auto' splits it Dirichlet (alpha {alpha:g}) "
        f"over {clients} clients; set partition (iid, dirichlet) and num-clients to choose"
    )


def partition_indices(
    labels: np.ndarray,
    num_clients: int | None,
    scheme: str,
    *,
    seed: int,
    alpha: float | None = None,
    groups: np.ndarray | None = None,
    cap_factor: float = 1.1,
    min_size: int = 2,
    max_tries: int = 100,
) -> list[np.ndarray]:
    """Row indices of each client; every row goes to exactly one client.

    Parameters
    ----------
    labels:
        Class of every train row.
    num_clients:
        Number of clients; for ``natural`` it must be ``None``/0 or the number of groups.
    scheme:
        ``natural`` (one client per distinct ``groups`` value, in sorted order), ``iid`` (shuffled,
        near-equal sizes) or ``dirichlet`` (label skew, see :func:`dirichlet_partition`).
    seed:
        Seed of the shuffles and draws.
    alpha:
        Dirichlet concentration (``dirichlet`` only); small is skewed, 1e8 is practically IID.
    groups:
        Natural client id of every row (``natural`` only).
    cap_factor:
        Dirichlet: a client already holding more than ``cap_factor * N / num_clients`` rows gets no
        rows of later classes (the FedCMI/CMSFed reference rule).
    min_size:
        Dirichlet: draws are repeated until every client has at least this many rows.
    """
    labels = np.asarray(labels)
    if scheme not in SCHEMES:
        raise ValueError(f"partition must be one of {list(SCHEMES)}, got {scheme!r}")
    if scheme == "natural":
        if groups is None:
            raise ValueError(
                "partition='natural' needs a dataset with natural clients (such as hapt); "
                "use partition='iid' or 'dirichlet' with num-clients"
            )
        ids = np.unique(groups)
        if num_clients and num_clients != len(ids):
            raise ValueError(
                f"partition='natural' gives one client per group: this dataset has {len(ids)}, "
                f"so num-clients must be 0 or {len(ids)}, got {num_clients}"
            )
        return [np.flatnonzero(groups == g) for g in ids]
    if not num_clients or num_clients < 1:
        raise ValueError(f"partition={scheme!r} needs num-clients >= 1, got {num_clients}")
    if num_clients * min_size > len(labels):
        raise ValueError(f"{len(labels)} train rows cannot give {num_clients} clients {min_size} rows each")
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        return [np.sort(part) for part in np.array_split(rng.permutation(len(labels)), num_clients)]
    if alpha is None or alpha <= 0:
        raise ValueError(f"partition='dirichlet' needs dirichlet-alpha > 0, got {alpha}")
    for _ in range(max_tries):
        parts = dirichlet_partition(labels, num_clients, alpha, rng, cap_factor)
        if min(len(p) for p in parts) >= min_size:
            return parts
    raise ValueError(
        f"Dirichlet alpha={alpha} left a client with fewer than {min_size} rows in {max_tries} draws; "
        "raise dirichlet-alpha or lower num-clients"
    )


def dirichlet_partition(
    labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator, cap_factor: float = 1.1
) -> list[np.ndarray]:
    """One draw of the reference label-skew split.

    For each class in turn, client shares ``p ~ Dir(alpha * 1)``; a client that already holds more
    than ``cap_factor * N / num_clients`` rows gets share 0; shares are renormalised and the class's
    shuffled rows are cut at the cumulative shares.
    """
    cap = cap_factor * len(labels) / num_clients
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        shares = rng.dirichlet(np.full(num_clients, alpha))
        shares = shares * np.array([len(p) < cap for p in parts])
        if shares.sum() == 0:  # every client is at the cap: fall back to equal shares
            shares = np.ones(num_clients)
        shares = shares / shares.sum()
        cuts = (np.cumsum(shares) * len(rows)).astype(int)[:-1]
        for client, chunk in enumerate(np.split(rows, cuts)):
            parts[client].extend(chunk.tolist())
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
