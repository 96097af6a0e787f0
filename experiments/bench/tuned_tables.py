"""Tuned against defaults, side by side: the Markdown tables of docs/benchmarks.md's section
"Tuned against defaults" from the output directories of `fedmm bench methods`.

Reads the `runs.csv` of one or more `--protocol defaults` directories and of a `--protocol tuned`
directory and computes their comparison (`fedmm.bench_protocol.comparison`: test accuracy at the
validation-chosen round, its 95 % t interval, the paired t-test against FedAvg on the same seeds,
the last-rounds mean, the weakest modality alone with its paired difference); prints per dataset
one table with a row per method and the two protocols side by side. Then, from the tuned
directory's studies (`tune/<dataset>-<method>/trials.csv`), what tuning chose for each method (the
best complete trial's values, which `best.toml` holds, each with fedmm's default in brackets) and
what each study cost (trials complete / pruned, rounds trained, seconds); last, the runs whose
`summary.json` flags a collapse under each protocol. Nothing here selects anything: the numbers
are the benchmark's own. Usage:

    .venv/bin/python experiments/bench/tuned_tables.py --tuned DIR[,DIR...] --defaults DIR[,DIR...]

With `--selection FEDERATION` the directories are `fedmm bench selection`'s, run on the
federation FEDERATION of `fedmm.bench.METHOD_FEDERATIONS`: a row per policy, compared with
`random`.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fedmm.bench import METHOD_COMMON, METHOD_FEDERATIONS, METHODS
from fedmm.bench_protocol import comparison, study_dir
from fedmm.config import load_config
from fedmm.tables import markdown_lines, markdown_row
from fedmm.tune import search_space

PRIMARY = "test/acc-at-best-val"
LAST = "last-test/acc"


@dataclass(frozen=True)
class Layout:
    """Where a benchmark keeps a (federation, method) cell: `fedmm bench methods`' or, with
    ``selection`` set to a federation, `fedmm bench selection`'s (its methods are policies)."""

    selection: str | None = None

    @property
    def baseline(self) -> str:
        return "random" if self.selection else "fedavg"

    def runs(self, out: Path) -> pd.DataFrame:
        runs = pd.read_csv(out / "runs.csv")
        return runs.assign(dataset=self.selection, method=runs["policy"]) if self.selection else runs

    def base(self, d: str, m: str) -> list[str]:
        return [*METHOD_COMMON, *METHOD_FEDERATIONS[d], *((f"selection={m}",) if self.selection else METHODS[m])]

    def study(self, out: Path, d: str, m: str) -> Path:
        name = load_config(None, self.base(d, m)).dataset if self.selection else d  # the bench's own name
        return study_dir(out, name, m)

    def run_glob(self, d: str, m: str) -> str:
        return f"{m}-seed*" if self.selection else f"{d}-{m}-seed*"


def load(dirs: list[Path], datasets: list[str], layout: Layout = Layout()) -> pd.DataFrame:
    """The comparison (:func:`fedmm.bench_protocol.comparison`) of the runs in ``dirs``' `runs.csv`,
    every method of :data:`fedmm.bench.METHODS` (or policy) they hold, in its order (a benchmark run
    one method at a time rewrites its `comparison.csv` with that method only; `runs.csv` holds all)."""
    runs = pd.concat([layout.runs(d) for d in dirs], ignore_index=True)
    order = (
        list(dict.fromkeys(runs["method"])) if layout.selection else [m for m in METHODS if m in set(runs["method"])]
    )
    return comparison(runs, datasets, order, layout.baseline)


def cell(rows: pd.DataFrame, metric: str, *, ci: bool = False, test: bool = False, beside: bool = False) -> str:
    """``mean ± std``, with ``[low, high]`` when asked; ``test``: the paired difference and t-test p
    instead; ``beside``: the paired difference and p after the mean (nothing for the baseline)."""
    row = rows[rows["metric"] == metric]
    if row.empty:
        return "n/a"
    r = row.iloc[0]
    text = f"{r['mean']:.3f} ± {r['std']:.3f}"
    if ci:
        text += f" [{r['ci-low']:.3f}, {r['ci-high']:.3f}]"
    diff, p = r.get("diff", math.nan), r.get("t-p", math.nan)
    paired = "—" if pd.isna(diff) else f"{diff:+.3f} (p {'n/a' if pd.isna(p) else f'{p:.3f}'})"
    if test:  # "—": the baseline itself, or no baseline runs; p n/a: every paired difference 0
        return paired
    if beside and not pd.isna(diff):
        text += f", {paired}"
    return text


def side_by_side(
    tuned: pd.DataFrame,
    defaults: pd.DataFrame,
    datasets: list[str],
    methods: list[str],
    baseline: str = "fedavg",
    case: str = "method",
) -> str:
    """Per dataset, a row per method: tuned and defaults, each test acc at the best-val round with
    its 95 % CI, the paired difference from ``baseline`` (t-test p), the last-rounds mean and the
    weak modality alone."""
    sections = []
    for d in datasets:
        t_d, d_d = tuned[tuned["dataset"] == d], defaults[defaults["dataset"] == d]
        weak_metric = next((m for m in t_d["metric"].unique() if m not in (PRIMARY, LAST)), "")
        weak = weak_metric.split("/")[-1].removesuffix("-at-best-val")
        header = [
            case,
            "tuned: test acc at best-val round [95 % CI]",
            f"tuned: diff vs {baseline} (t p)",
            "tuned: last rounds",
            f"tuned: {weak} alone, diff (t p)",
            "defaults: test acc at best-val round [95 % CI]",
            f"defaults: diff vs {baseline} (t p)",
            "defaults: last rounds",
            f"defaults: {weak} alone, diff (t p)",
        ]
        lines = [
            f"**{d}** (weakest modality: {weak})",
            "",
            *markdown_lines(header),
        ]
        for m in methods:
            t_m, d_m = t_d[t_d["method"] == m], d_d[d_d["method"] == m]
            if t_m.empty and d_m.empty:
                continue
            cells = [m]
            for rows in (t_m, d_m):
                cells += [
                    cell(rows, PRIMARY, ci=True),
                    cell(rows, PRIMARY, test=True),
                    cell(rows, LAST),
                    cell(rows, weak_metric, beside=True),
                ]
            lines.append(markdown_row(cells))
        sections.append("\n".join(lines))
    return "\n\n".join(sections)


def chosen(tuned_dirs: list[Path], datasets: list[str], methods: list[str], layout: Layout = Layout()) -> str:
    """Per study: the best complete trial's values and the study's cost."""
    header = ["dataset", "policy" if layout.selection else "method", "best trial: mean val acc, last 5 rounds"]
    header += ["chosen values (default)"]
    header += ["complete / pruned"]
    header += ["rounds trained", "trial seconds"]
    lines = markdown_lines(header)
    for d in datasets:
        for m in methods:
            path = next((p for t in tuned_dirs if (p := layout.study(t, d, m) / "trials.csv").is_file()), None)
            if path is None:
                continue
            trials = pd.read_csv(path)
            done = trials[trials["state"] == "COMPLETE"]
            if done.empty:
                continue
            best = done.loc[done["value"].idxmax()]
            space = search_space(load_config(None, layout.base(d, m)))
            values = []
            for c in trials.columns:
                if c.startswith("params_"):
                    key = c.removeprefix("params_")
                    values.append(f"{key} {_fmt(best[c])} ({_fmt(space[key].default)})")
            pruned = int((trials["state"] == "PRUNED").sum())
            lines.append(
                markdown_row(
                    [
                        d,
                        m,
                        f"{best['value']:.4f}",
                        ", ".join(values),
                        f"{len(done)} / {pruned}",
                        str(int(trials["user_attrs_rounds"].sum())),
                        f"{trials['user_attrs_seconds'].sum():.0f}",
                    ]
                )
            )
    return "\n".join(lines)


def collapses(dirs: list[Path], dataset: str, method: str, layout: Layout = Layout()) -> str:
    """``k/n`` runs of ``method`` on ``dataset`` whose `summary.json` flags a collapse, with the
    rounds and rules of the flagged ones (``r18 loss``)."""
    flags, n = [], 0
    for d in dirs:
        for path in sorted((d / "runs").glob(f"{layout.run_glob(dataset, method)}/summary.json")):
            n += 1
            flag = json.loads(path.read_text()).get("collapsed")
            if flag:
                flags.append(f"r{flag['round']} {flag['rule']}")
    return f"{len(flags)}/{n}" + (f" ({', '.join(flags)})" if flags else "")


def collapse_table(
    tuned: list[Path], defaults: list[Path], datasets: list[str], methods: list[str], layout: Layout = Layout()
) -> str:
    """Per dataset and method with a flagged run under either protocol, the collapsed runs under
    each (:func:`collapses`); the other methods had none."""
    lines = markdown_lines(
        ["dataset", "policy" if layout.selection else "method", "tuned: runs flagged collapsed"]
        + ["defaults: runs flagged collapsed"]
    )
    for d in datasets:
        for m in methods:
            cells = collapses(tuned, d, m, layout), collapses(defaults, d, m, layout)
            if any(not c.startswith("0/") for c in cells):
                lines.append(markdown_row([d, m, *cells]))
    return "\n".join(lines)


def _fmt(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tuned", required=True, help="comma-separated `--protocol tuned` directories")
    parser.add_argument("--defaults", required=True, help="comma-separated `--protocol defaults` directories")
    parser.add_argument("--datasets", default="competition,segment")
    parser.add_argument("--methods", help="comma-separated, table order (default: the tuned directory's)")
    parser.add_argument("--selection", metavar="FEDERATION", help="`fedmm bench selection` directories of FEDERATION")
    args = parser.parse_args()
    layout = Layout(args.selection)
    datasets = [args.selection] if args.selection else args.datasets.split(",")
    defaults_dirs = [Path(p) for p in args.defaults.split(",")]
    tuned_dirs = [Path(p) for p in args.tuned.split(",")]
    missing = [str(d) for d in tuned_dirs + defaults_dirs if not (d / "runs.csv").is_file()]
    if missing:
        parser.error(f"no runs.csv in {', '.join(missing)}: name the directories a finished `fedmm bench` wrote")
    tuned = load(tuned_dirs, datasets, layout)
    defaults = load(defaults_dirs, datasets, layout)
    methods = args.methods.split(",") if args.methods else list(dict.fromkeys(tuned["method"]))
    print(side_by_side(tuned, defaults, datasets, methods, layout.baseline, "policy" if args.selection else "method"))
    print()
    print(chosen(tuned_dirs, datasets, methods, layout))
    print()
    print(collapse_table(tuned_dirs, defaults_dirs, datasets, methods, layout))


if __name__ == "__main__":
    main()
