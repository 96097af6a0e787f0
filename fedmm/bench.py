"""Benchmarks over grids of runs: the same base config under several variants and seeds.

:func:`run_grid` simulates every (case, seed), one after the other, and appends one row per run to
a tidy CSV that is rewritten after every run, so an interrupted benchmark keeps what it finished
and a rerun skips it. ``fedmm bench selection`` (:func:`selection_benchmark`) is the grid over
selection policies, with per-round curves, a Markdown table and plots.

Why one module of this size: the grid of runs and the tables of its two benchmarks (selection,
methods), which share the grid.
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
from fedmm.model_selection import VAL_ACC, best_on_validation
from fedmm.reporting import weakest_modality
from fedmm.results import CLIENTS_FILE, LAST_ROUNDS, ROUNDS_FILE
from fedmm.runlock import directory_lock
from fedmm.tables import markdown_lines, markdown_row
from fedmm.tta import (
    CLOCK_COLUMN,
    accuracy_column,
    has_clock,
    multimodal_share,
    participation,
    plot_time_to_accuracy,
    time_to_target,
)


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
    on_start: Callable[[str], None] | None = None,
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
    on_start:
        Called with :func:`run_label`'s line before every run of the grid (and for a run already in
        the CSV, which is skipped).
    """
    if simulate is None:
        from fedmm.simulation import simulate

    with directory_lock(Path(csv_path).parent, "benchmark directory"):  # its CSV and runs: one grid at a time
        return _run_grid(config, overrides, cases, seeds, csv_path, runs_dir, on_row, simulate, on_start)


def _run_grid(
    config: Path | None,
    overrides: Sequence[str],
    cases: Sequence[Case],
    seeds: Iterable[int],
    csv_path: Path,
    runs_dir: Path | None,
    on_row: Callable[[dict[str, Any]], None] | None,
    simulate: Simulate,
    on_start: Callable[[str], None] | None,
) -> pd.DataFrame:
    seeds = list(seeds)
    label_names = sorted({k for c in cases for k in c.labels})
    runs = [
        (case, seed, load_config(config, [*overrides, *case.overrides, f"seed={seed}"]))
        for case in cases
        for seed in seeds
    ]  # every config error surfaces before the first run
    rows = pd.read_csv(csv_path).to_dict("records") if csv_path.is_file() else []
    done = {tuple(str(r[k]) for k in (*label_names, "seed")) for r in rows}
    for index, (case, seed, run) in enumerate(runs, 1):
        key = tuple(str(case.labels.get(k)) for k in label_names) + (str(seed),)
        if on_start:
            on_start(run_label(index, len(runs), case, seed) + (": in the CSV already, skipped" if key in done else ""))
        if key in done:
            continue
        out = runs_dir / case.slug(seed) if runs_dir is not None else None
        summary = simulate(run, out, overwrite=True)
        if summary.get("status") == "failed":  # a failed run is no benchmark row; finished rows stay in the CSV
            raise ValueError(
                f"run {case.slug(seed)} stopped, {summary['reason']}; first client error: "
                f"{summary['first-client-error']}"
            )
        row = {
            **case.labels,
            "seed": seed,
            **summary["final"],
            "best-test/acc": summary["best-test/acc"],
            "best-round": summary["best-round"],
            "bytes-up": summary["total-bytes-up"],
            "seconds": summary["total-seconds"],
            "loss-growth": summary["loss-growth"],
            "last-test/acc": summary.get("last-rounds-test/acc", math.nan),
            "diverged-round": summary["diverged"]["round"] if summary["diverged"] else math.nan,
            **{
                k: v
                for k, v in summary.items()  # the round chosen on validation (validation = "auto")
                if k.endswith("-at-best-val") or k in ("best-val/acc", "best-val-round", "last-rounds-val/acc")
            },
        }
        rows.append(row)
        _write_csv(pd.DataFrame(rows), csv_path)
        if on_row:
            on_row(row)
    return pd.DataFrame(rows)


def run_label(index: int, total: int, case: Case, seed: int) -> str:
    """``[3/12] method=mnl seed=1``: which run of a grid this is.

    Parameters
    ----------
    index:
        The run's position in the grid, from 1.
    total:
        The number of runs in the grid.
    case:
        The run's variant (its labels are shown).
    seed:
        The run's seed.
    """
    labels = " ".join(f"{k}={v}" for k, v in case.labels.items())
    return f"[{index}/{total}] {labels} seed={seed}"


# -- fedmm bench selection ---------------------------------------------------------------------------
def selection_benchmark(
    config: Path | None,
    overrides: Sequence[str],
    policies: Sequence[str],
    seeds: Sequence[int],
    out_dir: Path,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    on_start: Callable[[str], None] | None = None,
    protocol: str = "defaults",
    tune_settings: Any = None,
    simulate: Simulate | None = None,
) -> str:
    """The same federation and budget (``clients-per-round``) under each selection policy.

    Writes into ``out_dir``: ``runs/<policy>-seed<k>/`` (every run's results), ``selection.csv``
    (one row per policy, seed and round: accuracies, cumulative uploaded bytes, selection time, the
    simulated clock when the runs have device profiles), ``participation.csv`` (per policy, seed,
    round and held-modality combination: clients selected and trained, :func:`fedmm.tta.participation`),
    ``selection.md`` (the table below) and ``selection.png`` (accuracy against rounds, uploaded
    megabytes and simulated minutes). Returns the Markdown table of :func:`selection_table`.

    Parameters
    ----------
    config, overrides:
        The federation: a TOML file (``None``: the defaults) and ``key=value`` overrides.
    policies:
        Selection policies, one case each.
    seeds:
        Seeds of every policy.
    out_dir:
        Where the runs, CSVs, tables and plots go (finished runs are not repeated).
    on_row, on_start:
        As in :func:`run_grid`.
    protocol:
        How each policy's configuration is chosen (:mod:`fedmm.bench_protocol`): ``defaults``,
        ``paper`` or ``tuned`` (the policy's own parameters and the shared ones tuned on
        validation with ``tune_settings``, the same budget for every policy, into
        ``out_dir/tune/<dataset>-<policy>``). With a validation split the runs' comparison against
        ``random`` on the same seeds (or the first policy when ``random`` is not benchmarked) goes to
        ``comparison.md``/``.csv``/``.png`` and follows the selection table in what this returns.
    simulate:
        Runs one federation (default: on Ray).
    """
    from fedmm.bench_protocol import protocol_overrides, tuned_overrides, write_comparison
    from fedmm.strategies.selection import policy_class

    if not policies:
        raise ValueError("give at least one selection policy, e.g. --policies random,powd,divfl,cmsfed")
    for p in policies:
        policy_class(p)  # an unknown name fails here, naming the valid ones
    overrides = (*overrides, *protocol_overrides(protocol))
    dataset = load_config(config, overrides).dataset
    runs_dir = out_dir / "runs"
    with directory_lock(out_dir, "benchmark directory"):  # one benchmark per directory (fedmm.runlock)
        chosen = {
            p: tuned_overrides(dataset, p, (*overrides, f"selection={p}"), out_dir, tune_settings, simulate, config)
            if protocol == "tuned"
            else ()
            for p in policies
        }
        cases = [Case({"policy": p}, (f"selection={p}", *chosen[p])) for p in policies]
        runs = run_grid(config, overrides, cases, seeds, out_dir / "runs.csv", runs_dir, on_row, simulate, on_start)
        curves = pd.concat(
            [
                pd.read_csv(runs_dir / c.slug(s) / ROUNDS_FILE).assign(policy=c.labels["policy"], seed=s)
                for c in cases
                for s in seeds
            ],
            ignore_index=True,
        )
        curves["mb-up"] = curves.groupby(["policy", "seed"])["bytes-up"].cumsum() / 1e6
        _write_csv(curves, out_dir / "selection.csv")
        part = pd.concat(
            [
                participation(pd.read_csv(runs_dir / c.slug(s) / CLIENTS_FILE)).assign(
                    policy=c.labels["policy"], seed=s
                )
                for c in cases
                for s in seeds
            ],
            ignore_index=True,
        )
        _write_csv(part, out_dir / "participation.csv")
        table = selection_table(curves, policies, part)
        (out_dir / "selection.md").write_text(table + "\n")
        plot_selection(curves, policies, out_dir / "selection.png")
        compared = write_comparison(
            runs.assign(dataset=dataset, method=runs["policy"]),
            [dataset],
            policies,
            out_dir,
            protocol,
            baseline="random" if "random" in policies else policies[0],
        )
    return table if compared is None else f"{table}\n\n{compared}"


# -- fedmm bench methods -----------------------------------------------------------------------------
#: Every shipped dataset in two federations for ``fedmm bench methods``: its natural or IID one and
#: a strongly skewed one. The skewed ones (``segment``, ``mfeat``, ``synthetic`` with 3 modalities,
#: ``competition-skewed``, ``hapt-skewed``): Dirichlet alpha 0.5 over 20 clients, half of them
#: multimodal (:data:`METHOD_COMMON`), ``clients-per-round`` (10) of them a round. The natural and IID
#: ones: hapt's natural clients (its 24 users, half multimodal); ``competition`` (the federation of
#: its benchmark, docs/competition.md), ``segment-iid``, ``mfeat-iid`` and ``synthetic-iid``: 10 IID
#: clients, every one holding every modality and trained every round. ``synthetic-hard``: the skewed
#: federation on weaker signals (:data:`HARD_SYNTHETIC_STRENGTHS`), where the two synthetic federations
#: above saturate. A federation's keys come after :data:`METHOD_COMMON`, so they may replace it.
_SKEWED = ("partition=dirichlet", "dirichlet-alpha=0.5", "num-clients=20")
_IID_ALL = ("partition=iid", "num-clients=10", "clients-per-round=10", "allocation=all")
_SYNTHETIC = ("dataset=synthetic", "dataset.num-modalities=3")
#: m0, m1, m2's signal strengths of ``synthetic-hard``: a logistic regression on 600 centralised
#: training rows reaches 0.84, 0.67 and 0.52 test accuracy on each alone and 0.91 on all three (seed 0),
#: against 1.00, 0.98, 0.68 and 1.00 at the defaults (1.5, 0.95, 0.4).
HARD_SYNTHETIC_STRENGTHS = "0.6,0.4,0.25"
METHOD_FEDERATIONS: dict[str, tuple[str, ...]] = {
    "hapt": ("dataset=hapt", "partition=natural"),
    "segment": ("dataset=segment", *_SKEWED),
    "mfeat": ("dataset=mfeat", *_SKEWED),
    "synthetic": (*_SYNTHETIC, *_SKEWED),
    "competition": ("dataset=competition", *_IID_ALL),
    "hapt-skewed": ("dataset=hapt", *_SKEWED),
    "segment-iid": ("dataset=segment", *_IID_ALL),
    "mfeat-iid": ("dataset=mfeat", *_IID_ALL),
    "synthetic-iid": (*_SYNTHETIC, *_IID_ALL),
    "competition-skewed": ("dataset=competition", *_SKEWED),
    "synthetic-hard": (*_SYNTHETIC, f"dataset.strengths={HARD_SYNTHETIC_STRENGTHS}", *_SKEWED),
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
    **{
        f"fedavg+{o}": ("strategy=fedavg", f"objective={o}")
        for o in ("uniform", "ogm-ge", "pmr", "boost", "mnl", "remix", "arm")
    },
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
    on_start: Callable[[str], None] | None = None,
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
    on_start:
        Called with a line naming each run of the grid before it starts (:func:`run_label`).
    protocol:
        How each method's configuration is chosen (:mod:`fedmm.bench_protocol`): ``defaults``,
        ``paper`` (``preset=paper``) or ``tuned`` (tuned on validation with ``tune_settings``, a
        :class:`fedmm.tune.TuneSettings`, before its seeds run). Besides ``methods.md``, the runs'
        comparison (test accuracy at the validation-chosen round, 95 % CI, paired tests against
        FedAvg) goes to ``comparison.md``/``.csv``/``.png``; its table is returned (``defaults``:
        the ``methods.md`` table, as before).
    """
    from fedmm.bench_protocol import protocol_overrides, tuned_overrides, write_comparison

    preset = protocol_overrides(protocol)
    for name, valid, what in ((datasets, METHOD_FEDERATIONS, "dataset"), (methods, METHODS, "method")):
        unknown = [n for n in name if n not in valid]
        if unknown or not name:
            raise ValueError(
                f"unknown {what} {unknown[0]!r} for `fedmm bench methods`; choose from {', '.join(valid)}"
                if unknown
                else f"give at least one {what}"
            )
    base = {
        (d, m): (
            *METHOD_COMMON,
            *METHOD_FEDERATIONS[d],
            *METHODS[m],
            *(QUICK_OVERRIDES if quick else ()),
            *overrides,
            *preset,
        )
        for d in datasets
        for m in methods
    }
    with directory_lock(out_dir, "benchmark directory"):  # one benchmark per directory (fedmm.runlock)
        chosen = {
            key: tuned_overrides(*key, base[key], out_dir, tune_settings, simulate) if protocol == "tuned" else ()
            for key in base
        }
        cases = [Case({"dataset": d, "method": m}, (*base[d, m], *chosen[d, m])) for d, m in base]
        df = run_grid(None, [], cases, seeds, out_dir / "runs.csv", out_dir / "runs", on_row, simulate, on_start)
        table = methods_table(df, datasets, methods)
        atomic_write(out_dir / "methods.md", table + "\n")
        compared = write_comparison(df, datasets, methods, out_dir, protocol)
    return table if protocol == "defaults" or compared is None else compared  # defaults: the table as before


#: The header of the column that reports a run's round chosen on validation, and of the one that
#: stands in for it in runs without a validation split: the best round on the test split, an oracle.
AT_BEST_VAL = "test acc at best-val round"
ORACLE_BEST = "best acc (oracle: round chosen on test)"


def methods_table(runs: pd.DataFrame, datasets: Sequence[str], methods: Sequence[str]) -> str:
    """The Markdown table of :func:`methods_benchmark`: a section per dataset, a row per method
    (mean ± std over seeds; "diverged" counts the seeds whose run diverged). The third column is
    the test accuracy at the round chosen on validation; only runs without a validation split show
    the best test round instead, headed as the oracle it is."""
    chosen = "test/acc-at-best-val" in runs and runs["test/acc-at-best-val"].notna().any()
    columns = {
        "test/acc": "final acc",
        "last-test/acc": f"last {LAST_ROUNDS} rounds acc",
        **({"test/acc-at-best-val": AT_BEST_VAL} if chosen else {"best-test/acc": ORACLE_BEST}),
        "test/imbalance": "imbalance ratio",
        "loss-growth": "largest / round-1 train loss",
    }
    sections = []
    for d in datasets:
        rows = runs[runs["dataset"] == d]
        weak = weakest_modality(rows)
        header = ["method", *list(columns.values())[:3], f"{weak} alone", *list(columns.values())[3:], "diverged"]
        lines = [
            f"**{d}** (weakest modality: {weak})",
            "",
            *markdown_lines(header),
        ]
        for m in methods:
            run = rows[rows["method"] == m]
            if run.empty:
                continue
            cells = [
                _mean_std(run[c]) if c in run else "n/a"  # rows of a CSV written before the column
                for c in (*list(columns)[:3], f"test/acc/{weak}", *list(columns)[3:])
            ]
            diverged = int(run["diverged-round"].notna().sum())
            lines.append(markdown_row([m, *cells, f"{diverged}/{len(run)}"]))
        sections.append("\n".join(lines))
    return "\n\n".join(sections)


def selection_table(curves: pd.DataFrame, policies: Sequence[str], part: pd.DataFrame | None = None) -> str:
    """The Markdown table of :func:`selection_benchmark` from its per-round curves: per policy, mean
    ± std over seeds of the final multimodal test accuracy and that of the round chosen on
    validation (:func:`fedmm.model_selection.best_on_validation`; without a validation split the
    best test round, headed as the oracle it is), the final accuracy of the
    weak modality (the one with the lowest final accuracy alone, over all runs), the rounds needed
    to reach the target (95 % of the best policy's mean final accuracy, on the validation split
    when the runs have one, else the test split: :func:`fedmm.tta.accuracy_column`), with a
    simulated clock also the simulated minutes and the uploaded megabytes needed to reach it
    (:func:`fedmm.tta.time_to_target`; means over the seeds that reach it), the uploaded megabytes
    and the mean selection time per round; with ``part`` (:func:`fedmm.tta.participation` rows
    with ``policy`` and ``seed``) the share of multimodal clients among those selected and those
    trained."""
    if "mb-up" not in curves:
        curves = curves.assign(**{"mb-up": curves.groupby(["policy", "seed"])["bytes-up"].cumsum() / 1e6})
    last_round = curves["round"].max()
    final = curves[curves["round"] == last_round]
    weak = weakest_modality(final)
    column = accuracy_column(curves)
    clock = has_clock(curves)
    target = 0.95 * final.groupby("policy")[column].mean().max()
    name = "" if column == "test/acc" else f" {column}"
    chosen = VAL_ACC in curves and curves[VAL_ACC].notna().any()
    header = ["policy", "final acc", AT_BEST_VAL if chosen else ORACLE_BEST, f"{weak} alone (final)"]
    header.append(f"rounds to{name} {target:.3f}")
    if clock:
        header += ["sim minutes to target", "MB to target", "sim minutes (all rounds)"]
    header += ["uploaded MB", "selection ms/round"]
    if part is not None:
        header += ["multimodal share selected / trained"]
    lines = markdown_lines(header)
    for p in policies:
        runs = curves[curves["policy"] == p]
        per_seed = runs.groupby("seed")
        fin = runs[runs["round"] == last_round]
        reach = pd.DataFrame([time_to_target(r, target, column) for _, r in per_seed])
        reported = (
            pd.Series([best_on_validation(g.to_dict("records"))["test/acc-at-best-val"] for _, g in per_seed])
            if chosen
            else per_seed["test/acc"].max()
        )
        cells = [
            _mean_std(fin["test/acc"]),
            _mean_std(reported),
            _mean_std(fin[f"test/acc/{weak}"]),
            _reached(reach["round"], 1),
        ]
        if clock:
            cells += [
                _reached(reach["minutes"], 2),
                _reached(reach["mb"], 1),
                _mean_std(per_seed[CLOCK_COLUMN].max() / 60.0, digits=2),
            ]
        cells += [
            _mean_std(per_seed["bytes-up"].sum() / 1e6, digits=1),
            _mean_std(runs[runs["round"] > 0]["selection-seconds"] * 1e3, digits=2),
        ]
        if part is not None:
            shares = pd.DataFrame([multimodal_share(g) for _, g in part[part["policy"] == p].groupby("seed")])
            cells.append(
                f"{_mean_std(shares['selected'], digits=2)} / {_mean_std(shares['trained'], digits=2)}"
                if len(shares)
                else "n/a"
            )
        lines.append(markdown_row([p, *cells]))
    return "\n".join(lines)


def _reached(values: pd.Series, digits: int) -> str:
    """Mean over the seeds that reached the target; "never", or "(k/n seeds)" when only some did."""
    reached = values.dropna()
    text = f"{reached.mean():.{digits}f}" if len(reached) else "never"
    if 0 < len(reached) < len(values):
        text += f" ({len(reached)}/{len(values)} seeds)"
    return text


def plot_selection(curves: pd.DataFrame, policies: Sequence[str], path: Path) -> None:
    """Mean multimodal accuracy per policy against rounds, uploaded megabytes and, when the runs
    have a simulated clock, simulated minutes (:func:`fedmm.tta.plot_time_to_accuracy`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clock = has_clock(curves)
    fig, axes = plt.subplots(1, 3 if clock else 2, figsize=(15 if clock else 10, 4), dpi=120, sharey=True)
    plot_time_to_accuracy(curves, policies, "test/acc", axes[0], axes[1], axes[2] if clock else None)
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
    lines = markdown_lines(header)
    for keys, group in df.groupby(list(by), sort=sort):
        labels = keys if isinstance(keys, tuple) else (keys,)
        cells = [_mean_std(group[c]) if c in group else "n/a" for c in columns]
        lines.append(markdown_row([*labels, *cells]))
    return "\n".join(lines)


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
