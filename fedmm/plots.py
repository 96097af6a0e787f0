"""The figures of one run: ``accuracy.png`` (accuracy, loss and imbalance panels, titled with the
run's dataset, strategy, objective, selection and seed) and, for a run that selects clients,
``selection.png`` (who trained in each round, and which modalities).

Figures are made with matplotlib's object API (:class:`matplotlib.figure.Figure`), not pyplot:
no global backend is switched (a notebook's inline plots keep working after a run), nothing is
shared between threads (the server loop's own thread under Ray), and every figure is written with
:func:`fedmm.files.atomic_write`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from fedmm.files import atomic_write

#: Up to this many clients, the selection plot labels every client's row with the modalities it holds.
MAX_LABELLED_CLIENTS = 40
#: The run facts a title names, in order.
TITLE_KEYS = ("dataset", "strategy", "objective", "selection", "seed")


def new_figure(width: float, height: float, dpi: int = 110) -> Any:
    """A :class:`matplotlib.figure.Figure` of ``width`` x ``height`` inches, outside pyplot."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=dpi)


def integer_rounds(ax: Any) -> None:
    """Whole-number ticks on ``ax``'s x axis (rounds)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def save(fig: Any, path: Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically; returns ``path``."""
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path


def close(fig: Any) -> None:
    """Release ``fig`` once written (outside pyplot a figure needs no more than its last reference gone)."""
    fig.clear()


def run_title(config: Mapping[str, Any]) -> str:
    """``"hapt · fedavg · objective ce · selection all · seed 0"`` from a run's config (keys it
    lacks are left out).

    Parameters
    ----------
    config:
        The run's flat config (kebab-case keys) or its summary (which names the same facts but the seed).
    """
    parts = []
    for key in TITLE_KEYS:
        if key in config and config[key] not in ("", None):
            parts.append(str(config[key]) if key in ("dataset", "strategy") else f"{key} {config[key]}")
    return " · ".join(parts)


def plot_run(rounds: pd.DataFrame, path: Path, config: Mapping[str, Any]) -> Path:
    """A run's ``accuracy.png``: three panels over the rounds, titled :func:`run_title`.

    1. Test accuracy: multimodal, each modality alone, and (FedCMI runs) each modality with the
       infiltration fill (``test/acc-fill/<m>``, dashed).
    2. Losses: the central test loss and the clients' mean training loss.
    3. Imbalance (``test/imbalance``), when the run has it.

    Parameters
    ----------
    rounds:
        The run's ``rounds.csv`` as a frame (round 0 first).
    path:
        The PNG to write.
    config:
        The run's flat config (for the title).
    """
    panels = ["acc", "loss"] + (["imbalance"] if "test/imbalance" in rounds else [])
    fig = new_figure(4.6 * len(panels), 4.0)
    axes = dict(zip(panels, fig.subplots(1, len(panels), squeeze=False)[0]))
    try:
        ax = axes["acc"]
        modalities = sorted(c.rsplit("/", 1)[1] for c in rounds.columns if c.startswith("test/acc/"))
        ax.plot(rounds["round"], rounds["test/acc"], marker="o", markersize=3, lw=2, label="multimodal", color="k")
        for i, m in enumerate(modalities):
            color = f"C{i}"
            ax.plot(
                rounds["round"],
                rounds[f"test/acc/{m}"],
                marker="o",
                markersize=3,
                lw=1.2,
                color=color,
                label=f"{m} alone",
            )
            if f"test/acc-fill/{m}" in rounds:
                ax.plot(
                    rounds["round"], rounds[f"test/acc-fill/{m}"], ls="--", lw=1.2, color=color, label=f"{m} + fill"
                )
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
        ax = axes["loss"]
        for column, label in (("test/loss", "test loss (global model)"), ("train/loss", "training loss (clients)")):
            if column in rounds:
                rows = rounds.dropna(subset=[column])
                ax.plot(rows["round"], rows[column], marker="o", markersize=3, label=label)
        ax.set_ylabel("loss")
        ax.legend(fontsize=8)
        if "imbalance" in axes:
            ax = axes["imbalance"]
            ax.plot(rounds["round"], rounds["test/imbalance"], marker="o", markersize=3, color="C3")
            ax.axhline(1.0, color="grey", lw=0.8, ls=":")
            ax.set_ylabel("imbalance (test)")
        for ax in axes.values():
            ax.set_xlabel("round")
            integer_rounds(ax)
            ax.grid(alpha=0.3)
        fig.suptitle(run_title(config))
        fig.tight_layout()
        return save(fig, path)
    finally:
        close(fig)


def plot_selection(clients: pd.DataFrame, path: Path, config: Mapping[str, Any]) -> Path | None:
    """A run's ``selection.png``: one row per client, one column per round, each trained client's
    cell coloured by the modalities it trained (``x``: selected but its reply failed); round 0 is
    the update pass of divfl/cmsfed. ``None`` (nothing written) without training rows.

    Parameters
    ----------
    clients:
        The run's ``clients.csv`` as a frame.
    path:
        The PNG to write.
    config:
        The run's flat config (for the title).
    """
    need = {"round", "partition-id", "modalities-trained", "status"}
    if clients.empty or not need <= set(clients.columns):
        return None
    rows = clients.dropna(subset=["partition-id"]).copy()
    rows = rows[rows["modalities-trained"].notna() & (rows["modalities-trained"].astype(str) != "")]
    if rows.empty:
        return None
    rows["partition-id"] = rows["partition-id"].astype(int)
    rows["round"] = rows["round"].astype(int)
    combos = sorted(rows["modalities-trained"].astype(str).unique(), key=lambda s: (s.count("+"), s))
    num_clients = int(rows["partition-id"].max()) + 1
    first, last = int(rows["round"].min()), int(rows["round"].max())
    fig = new_figure(max(7.0, min(14.0, 4.0 + 0.25 * (last - first))), max(3.5, min(12.0, 2.0 + 0.18 * num_clients)))
    ax = fig.subplots()
    try:
        for i, combo in enumerate(combos):
            ok = rows[(rows["modalities-trained"].astype(str) == combo) & (rows["status"] == "ok")]
            ax.scatter(ok["round"], ok["partition-id"], marker="s", s=30, color=f"C{i}", label=combo)
        failed = rows[rows["status"] != "ok"]
        if not failed.empty:
            ax.scatter(failed["round"], failed["partition-id"], marker="x", s=30, color="k", label="failed")
        ax.set_xlabel("round (0: update pass)" if (rows["round"] == 0).any() else "round")
        ax.set_ylabel("client (partition id)")
        ax.set_xlim(first - 0.5, last + 0.5)
        ax.set_ylim(-0.5, num_clients - 0.5)
        integer_rounds(ax)
        held = (
            rows.dropna(subset=["modalities-held"]).groupby("partition-id")["modalities-held"].last()
            if "modalities-held" in rows
            else pd.Series(dtype=str)
        )
        if num_clients <= MAX_LABELLED_CLIENTS:  # each client's row names what it holds
            ax.set_yticks(range(num_clients))
            ax.set_yticklabels(
                [f"{p} ({held[p]})" if p in held.index else str(p) for p in range(num_clients)],
                fontsize=7 if num_clients > 16 else 9,
            )
            ax.set_ylabel("client (modalities held)")
        else:
            from matplotlib.ticker import MaxNLocator

            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.2)
        ax.legend(title="modalities trained", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.set_title(f"who trained: {run_title(config)}", fontsize=10)
        fig.tight_layout()
        return save(fig, path)
    finally:
        close(fig)
