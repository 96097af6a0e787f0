"""Benchmarks over grids of runs: the same base config under several variants and seeds.

:func:`run_grid` simulates every (case, seed), one after the other, and appends one row per run to
a tidy CSV that is rewritten after every run, so an interrupted benchmark keeps what it finished
and a rerun skips it. ``fedmm bench selection`` (:func:`selection_benchmark`) is the grid over
selection policies, with per-round curves, a Markdown table and plots.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from fedmm.config import load_config
from fedmm.files import atomic_write
from fedmm.results import LAST_ROUNDS, ROUNDS_FILE


@dataclass(frozen=True)
class Case:
    """One variant of the base config.

    Parameters
    ----------
    labels:
        Columns that identify the case in the CSV (``{"policy": "divfl"}``).
    overrides:
        ``key=value`` overrides applied on top of the base config and its overrides.
    """

    labels: dict[str, Any]
    overrides: tuple[str, ...] = field(default_factory=tuple)

    def slug(self, seed: int) -> str:
        """A directory name for this case and seed."""
        return "-".join(f"{v}" for v in self.labels.values()).replace("/", "_") + f"-seed{seed}"


#: ``simulate(run, out_dir, overwrite=...) -> summary``: how :func:`run_grid` runs one federation.
Simulate = Callable[..., dict[str, Any]]


def run_grid(
    config: Path | None,
    overrides: Sequence[str],
    cases: Sequence[Case],
    seeds: Iterable[int],
    csv_path: Path,
    runs_dir: Path | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    simulate: Simulate | None = None,
) -> pd.DataFrame:
    """Simulate every case with every seed; one CSV row per run (labels, seed, final metrics).

    Parameters
    ----------
    config:
        Base TOML config (``None``: the defaults).
    overrides:
        ``key=value`` overrides of the base config, before each case's own.
    cases:
        The variants.
    seeds:
        Seeds; each run sets ``seed``.
    csv_path:
        The tidy CSV (read first: rows already there are not run again).
    runs_dir:
        Where each run writes its results directory (``<case>-seed<k>``); ``None`` keeps none.
    on_row:
        Called with every new row.
    simulate:
        Runs one federation (default: :func:`fedmm.server.simulate.simulate`, on Ray).
    """
    if simulate is None:
        from fedmm.simulation import simulate

    seeds = list(seeds)
    label_names = sorted({k for c in cases for k in c.labels})
    runs = [(case, seed, load_config(config, [*overrides, *case.overrides, f"seed={seed}"]))
            for case in cases for seed in seeds]  # every config error surfaces before the first run
    rows = pd.read_csv(csv_path).to_dict("records") if csv_path.is_file() else []
    done = {tuple(str(r[k]) for k in (*label_names, "seed")) for r in rows}
    for case, seed, run in runs:
        key = tuple(str(case.labels.get(k)) for k in label_names) + (str(seed),)
        if key in done:
            continue
        out = runs_dir / case.slug(seed) if runs_dir is not None else None
        summary = simulate(run, out, overwrite=True)
        if summary.get("status") == "failed":  # a failed run is no benchmark row; finished rows stay in the CSV
            raise ValueError(f"run {case.slug(seed)} stopped, {summary['reason']}; first client error: "
                             f"{summary['first-client-error']}")
        row = {**case.labels, "seed": seed, **summary["final"], "best-test/acc": summary["best-test/acc"],
               "best-round": summary["best-round"], "bytes-up": summary["total-bytes-up"],
               "seconds": summary["total-seconds"], "loss-growth": summary["loss-growth"],
               "last-test/acc": summary.get("last-rounds-test/acc", math.nan),
               "diverged-round": summary["diverged"]["round"] if summary["diverged"] else math.nan,
               **{k: v for k, v in summary.items()  # the round chosen on validation (validation = "auto")
                  if k.endswith("-at-best-val") or k in ("best-val/acc", "best-val-round", "last-rounds-val/acc")}}
        rows.append(row)
        _write_csv(pd.DataFrame(rows), csv_path)
        if on_row:
            on_row(row)
    return pd.DataFrame(rows)


# -- fedmm bench selection ---------------------------------------------------------------------------
def selection_benchmark(
    config: Path | None,
    overrides: Sequence[str],
    policies: Sequence[str],
    seeds: Sequence[int],
    out_dir: Path,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> str:
    """The same federation and budget (``clients-per-round``) under each selection policy.

    Writes into ``out_dir``: ``runs/<policy>-seed<k>/`` (every run's results), ``selection.csv``
    (one row per policy, seed and round: accuracies, cumulative uploaded bytes, selection time),
    ``selection.md`` (the table below) and ``selection.png`` (accuracy against rounds and against
    uploaded megabytes). Returns the Markdown table: per policy, mean ± std over seeds of the final
    and the best multimodal accuracy, the final accuracy of the weak modality (the one with the
    lowest final accuracy alone, over all runs), the rounds needed to reach 95 % of the best
    policy's mean final accuracy, the uploaded megabytes and the mean selection time per round.
    """
    from fedmm.strategies.selection import policy_class

    if not policies:
        raise ValueError("give at least one selection policy, e.g. --policies random,powd,divfl,cmsfed")
    for p in policies:
        policy_class(p)  # an unknown name fails here, naming the valid ones
    cases = [Case({"policy": p}, (f"selection={p}",)) for p in policies]
    runs_dir = out_dir / "runs"
    run_grid(config, overrides, cases, seeds, out_dir / "runs.csv", runs_dir, on_row)
    curves = pd.concat(
        [pd.read_csv(runs_dir / c.slug(s) / ROUNDS_FILE).assign(policy=c.labels["policy"], seed=s)
         for c in cases for s in seeds],
        ignore_index=True,
    )
    curves["mb-up"] = curves.groupby(["policy", "seed"])["bytes-up"].cumsum() / 1e6
    _write_csv(curves, out_dir / "selection.csv")
    table = selection_table(curves, policies)
    (out_dir / "selection.md").write_text(table + "\n")
    plot_selection(curves, policies, out_dir / "selection.png")
    return table


# -- fedmm bench methods -----------------------------------------------------------------------------
#: Every shipped dataset's federation in ``fedmm bench methods``: hapt's natural clients (its 24
#: users), the others Dirichlet alpha 0.5 over 20 clients (synthetic with 3 modalities); half of
#: the clients multimodal everywhere.
METHOD_FEDERATIONS: dict[str, tuple[str, ...]] = {
    "hapt": ("dataset=hapt", "partition=natural"),
    "segment": ("dataset=segment", "partition=dirichlet", "dirichlet-alpha=0.5", "num-clients=20"),
    "mfeat": ("dataset=mfeat", "partition=dirichlet", "dirichlet-alpha=0.5", "num-clients=20"),
    "synthetic": ("dataset=synthetic", "dataset.num_modalities=3", "partition=dirichlet", "dirichlet-alpha=0.5",
                  "num-clients=20"),
}
METHOD_COMMON = ("allocation=multi-ratio", "multi-ratio=0.5")
#: Every strategy with its own objective and selection, CMSFed also with random selection, and
#: every local objective under FedAvg; each with its default parameters. ``fedavg`` (selection
#: ``all``) trains every client every round; ``fedavg+random`` trains ``clients-per-round`` of
#: them, as CMSFed's selections do, so it is CMSFed's baseline at equal participation.
METHODS: dict[str, tuple[str, ...]] = {
    "fedavg": ("strategy=fedavg",),
    "fedavg+random": ("strategy=fedavg", "selection=random"),
    "fedprox": ("strategy=fedprox",),
    "fedcmi": ("strategy=fedcmi",),
    "cmsfed": ("strategy=cmsfed",),
    "cmsfed+random": ("strategy=cmsfed", "selection=random"),
    **{f"fedavg+{o}": ("strategy=fedavg", f"objective={o}")
       for o in ("uniform", "ogm-ge", "pmr", "boost", "mnl", "remix", "arm")},
}
#: ``--quick``: a smoke run of every method (1 seed, 2 rounds of 1 local epoch, 6 clients).
QUICK_OVERRIDES = ("num-server-rounds=2", "local-epochs=1", "num-clients=6", "clients-per-round=3")


def methods_benchmark(
    datasets: Sequence[str],
    methods: Sequence[str],
    seeds: Sequence[int],
    out_dir: Path,
    overrides: Sequence[str] = (),
    *,
    quick: bool = False,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    simulate: Simulate | None = None,
    protocol: str = "defaults",
    tune_settings: Any = None,
) -> str:
    """Every method of :data:`METHODS` on every federation of :data:`METHOD_FEDERATIONS`.

    Writes ``runs.csv`` (one tidy row per dataset, method and seed: final and best multimodal
    accuracy, ``last-test/acc`` = the mean multimodal accuracy of the last
    :data:`~fedmm.results.LAST_ROUNDS` rounds, each modality alone, the imbalance ratio,
    ``loss-growth`` = the largest round
    training loss over the round-1 value, ``diverged-round``) and ``methods.md`` (the table this
    returns: per dataset and method, mean ± std over seeds) into ``out_dir``; each run's results
    go to ``out_dir/runs/<dataset>-<method>-seed<k>``.

    Parameters
    ----------
    datasets:
        Keys of :data:`METHOD_FEDERATIONS`.
    methods:
        Keys of :data:`METHODS`.
    seeds:
        Seeds of every (dataset, method).
    out_dir:
        Where the CSV, the table and the runs go (finished runs are not repeated).
    overrides:
        ``key=value`` overrides of every run (after the federation's and the method's).
    quick:
        Add :data:`QUICK_OVERRIDES` (smoke runs; their numbers mean nothing).
    on_row:
        Called with every finished run's row.
    simulate:
        Runs one federation (default: on Ray).
    protocol:
        How each method's configuration is chosen (:mod:`fedmm.bench_protocol`): ``defaults``,
        ``paper`` (``preset=paper``) or ``tuned`` (tuned on validation with ``tune_settings``, a
        :class:`fedmm.tune.TuneSettings`, before its seeds run). Besides ``methods.md``, the runs'
        comparison (test accuracy at the validation-chosen round, 95 % CI, paired tests against
        FedAvg) goes to ``comparison.md``/``.csv``/``.png``; its table is returned (``defaults``:
        the ``methods.md`` table, as before).
    """
    from fedmm.bench_protocol import PROTOCOLS, tuned_overrides, write_comparison

    if protocol not in PROTOCOLS:
        raise ValueError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    for name, valid, what in ((datasets, METHOD_FEDERATIONS, "dataset"), (methods, METHODS, "method")):
        unknown = [n for n in name if n not in valid]
        if unknown or not name:
            raise ValueError(f"unknown {what} {unknown[0]!r} for `fedmm bench methods`; choose from "
                             f"{', '.join(valid)}" if unknown else f"give at least one {what}")
    base = {(d, m): (*METHOD_FEDERATIONS[d], *METHOD_COMMON, *METHODS[m], *(QUICK_OVERRIDES if quick else ()),
                     *overrides, *(("preset=paper",) if protocol == "paper" else ()))
            for d in datasets for m in methods}
    chosen = {key: tuned_overrides(*key, base[key], out_dir, tune_settings, simulate) if protocol == "tuned" else ()
              for key in base}
    cases = [Case({"dataset": d, "method": m}, (*base[d, m], *chosen[d, m])) for d, m in base]
    df = run_grid(None, [], cases, seeds, out_dir / "runs.csv", out_dir / "runs", on_row, simulate)
    table = methods_table(df, datasets, methods)
    atomic_write(out_dir / "methods.md", table + "\n")
    compared = write_comparison(df, datasets, methods, out_dir, protocol)
    return table if protocol == "defaults" or compared is None else compared  # defaults: the table as before


def methods_table(runs: pd.DataFrame, datasets: Sequence[str], methods: Sequence[str]) -> str:
    """The Markdown table of :func:`methods_benchmark`: a section per dataset, a row per method
    (mean ± std over seeds; "diverged" counts the seeds whose run diverged)."""
    columns = {"test/acc": "final acc", "last-test/acc": f"last {LAST_ROUNDS} rounds acc", "best-test/acc": "best acc",
               "test/imbalance": "imbalance ratio", "loss-growth": "largest / round-1 train loss"}
    sections = []
    for d in datasets:
        rows = runs[runs["dataset"] == d]
        weak = weak_modality(rows)
        header = ["method", *list(columns.values())[:3], f"{weak} alone", *list(columns.values())[3:], "diverged"]
        lines = [f"**{d}** (weakest modality: {weak})", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for m in methods:
            run = rows[rows["method"] == m]
            if run.empty:
                continue
            cells = [_mean_std(run[c]) if c in run else "n/a"  # rows of a CSV written before the column
                     for c in (*list(columns)[:3], f"test/acc/{weak}", *list(columns)[3:])]
            diverged = int(run["diverged-round"].notna().sum())
            lines.append("| " + " | ".join([m, *cells, f"{diverged}/{len(run)}"]) + " |")
        sections.append("\n".join(lines))
    return "\n\n".join(sections)


def weak_modality(final: pd.DataFrame) -> str:
    """The modality whose final accuracy alone (``test/acc/<m>``) is lowest, averaged over the runs
    (one row per run)."""
    alone = {c.rsplit("/", 1)[1]: final[c].mean() for c in final.columns
             if c.startswith("test/acc/") and not c.endswith("-at-best-val")  # the final round's, not the chosen one's
             and final[c].notna().any()}  # another dataset's modalities are NaN
    if not alone:
        raise ValueError("the runs report no single-modality accuracy (test/acc/<m>)")
    return min(alone, key=alone.get)


def selection_table(curves: pd.DataFrame, policies: Sequence[str]) -> str:
    """The Markdown table of :func:`selection_benchmark` from its per-round curves."""
    last_round = curves["round"].max()
    final = curves[curves["round"] == last_round]
    weak = weak_modality(final)
    target = 0.95 * final.groupby("policy")["test/acc"].mean().max()
    lines = [
        f"| policy | final acc | best acc | {weak} alone (final) | rounds to {target:.3f} | uploaded MB | "
        "selection ms/round |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in policies:
        runs = curves[curves["policy"] == p]
        per_seed = runs.groupby("seed")
        fin = runs[runs["round"] == last_round]
        reach = per_seed.apply(lambda r: _first_round(r, target), include_groups=False)
        reached = reach.dropna()
        reach_text = f"{reached.mean():.1f}" if len(reached) else "never"
        if 0 < len(reached) < len(reach):
            reach_text += f" ({len(reached)}/{len(reach)} seeds)"
        cells = [
            _mean_std(fin["test/acc"]),
            _mean_std(per_seed["test/acc"].max()),
            _mean_std(fin[f"test/acc/{weak}"]),
            reach_text,
            _mean_std(per_seed["bytes-up"].sum() / 1e6, digits=1),
            _mean_std(runs[runs["round"] > 0]["selection-seconds"] * 1e3, digits=2),
        ]
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_selection(curves: pd.DataFrame, policies: Sequence[str], path: Path) -> None:
    """Mean multimodal test accuracy per policy against rounds and against uploaded megabytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=120, sharey=True)
    for p in policies:
        mean = curves[curves["policy"] == p].groupby("round")[["test/acc", "mb-up"]].mean()
        axes[0].plot(mean.index, mean["test/acc"], label=p)
        axes[1].plot(mean["mb-up"], mean["test/acc"], label=p)
    axes[0].set_xlabel("round")
    axes[1].set_xlabel("uploaded MB (cumulative)")
    axes[0].set_ylabel("test accuracy (mean over seeds)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def mean_std_table(df: pd.DataFrame, by: Sequence[str], columns: Mapping[str, str], *, sort: bool = True) -> str:
    """A Markdown table of per-group ``mean ± std`` over the rows (seeds) of ``df``.

    Parameters
    ----------
    df:
        One row per run.
    by:
        The label columns that make a row of the table (its first cells).
    columns:
        Data column -> header of the table's column; a column missing from ``df`` or holding only
        NaN in a group gives ``n/a``.
    sort:
        Sort the groups by their labels (else keep their order of first appearance).
    """
    header = [*by, *columns.values()]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for keys, group in df.groupby(list(by), sort=sort):
        labels = keys if isinstance(keys, tuple) else (keys,)
        cells = [_mean_std(group[c]) if c in group else "n/a" for c in columns]
        lines.append("| " + " | ".join([*map(str, labels), *cells]) + " |")
    return "\n".join(lines)


def _first_round(run: pd.DataFrame, target: float) -> float:
    hit = run[run["test/acc"] >= target]["round"]
    return float(hit.min()) if len(hit) else math.nan


def _mean_std(values: pd.Series, digits: int = 3) -> str:
    values = pd.Series(values).dropna()
    if values.empty:
        return "n/a"
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std():.{digits}f}"


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, df.to_csv(index=False))
