"""The measured causes behind the selection benchmark on the simulated clock (docs/benchmarks.md,
"Selection on the simulated clock"): per policy, mean over seeds, from each run's ``rounds.csv``
and ``clients.csv`` under ``<out>/runs``.

Columns: simulated seconds of round 1 (it holds DivFL's and CMSFed's update pass: every client
trains once, the round lasts as long as the slowest device) and the median of the later rounds;
the selected clients' outcome shares (trained ``ok``, ``late``, ``dropped``); the multimodal share
of the selected and of the trained clients; the share of trained multimodal clients that trained a
subset of their modalities (CMSFed's weak-only mode); a trained client's mean simulated seconds
(download / train / upload) and uploaded kB; the policy's selection seconds per round (wall).

Usage: ``.venv/bin/python experiments/bench/devices_analysis.py experiments/out/devices-all
[experiments/out/devices-deadline ...]``
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd


def run_stats(run_dir: Path) -> dict[str, float]:
    rounds = pd.read_csv(run_dir / "rounds.csv")
    clients = pd.read_csv(run_dir / "clients.csv")
    rnd = rounds[rounds["round"] > 0]
    sel = clients[clients["round"] > 0]
    ok = sel[sel["status"] == "ok"]
    multi_sel = sel["modalities-held"].str.contains(r"\+")
    multi_ok = ok["modalities-held"].str.contains(r"\+")
    subset = ok[multi_ok]["modalities-trained"] != ok[multi_ok]["modalities-held"]
    return {
        "round 1 sim s": float(rnd["sim-seconds"].iloc[0]),
        "later rounds sim s (median)": float(rnd["sim-seconds"].iloc[1:].median()),
        "ok share": float((sel["status"] == "ok").mean()),
        "late share": float((sel["status"] == "late").mean()),
        "dropped share": float((sel["status"] == "dropped").mean()),
        "multimodal share selected": float(multi_sel.mean()),
        "multimodal share trained": float(multi_ok.mean()) if len(ok) else float("nan"),
        "multimodal share selected, rounds 1-10": float(multi_sel[sel["round"] <= 10].mean()),
        "multimodal share selected, last 10 rounds": float(multi_sel[sel["round"] > sel["round"].max() - 10].mean()),
        "multimodal trained on a subset": float(subset.mean()) if len(subset) else 0.0,
        "trained client sim s": float((ok["sim-download"] + ok["sim-train"] + ok["sim-upload"]).mean()),
        "download s": float(ok["sim-download"].mean()),
        "train s": float(ok["sim-train"].mean()),
        "upload s": float(ok["sim-upload"].mean()),
        "upload kB per trained client": float(ok["bytes-up"].mean() / 1e3),
        "distinct clients trained": float(ok["partition-id"].nunique()),
    }


def table(out_dir: Path) -> pd.DataFrame:
    rows = []
    for run in sorted((out_dir / "runs").iterdir()):
        if not (run / "clients.csv").is_file():  # a run still going
            continue
        policy, seed = run.name.rsplit("-seed", 1)
        rows.append({"policy": policy, "seed": int(seed), **run_stats(run)})
    df = pd.DataFrame(rows)
    order = _order(df["policy"])
    return df.groupby("policy").mean(numeric_only=True).drop(columns="seed").loc[order]


#: Table order of the benchmark's policies (others follow, in order of appearance).
ORDER = ("random", "powd", "divfl", "cmsfed", "oort")


def _order(names) -> list[str]:
    seen = list(dict.fromkeys(names))
    return [p for p in ORDER if p in seen] + [p for p in seen if p not in ORDER]


def markdown(df: pd.DataFrame) -> str:
    """``df`` as a Markdown table (index = first column), numbers with 3 decimals."""
    lines = ["| | " + " | ".join(map(str, df.columns)) + " |", "|---|" + "---|" * len(df.columns)]
    for name, row in df.iterrows():
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    return "\n".join(lines)


def selection_table_of(out_dir: Path) -> str:
    """``fedmm bench selection``'s table (:func:`fedmm.bench.selection_table`) over the finished
    runs under ``out_dir/runs`` (also while the benchmark is still running)."""
    from fedmm.bench import selection_table
    from fedmm.tta import participation

    curves, parts, order = [], [], []
    for run in sorted((out_dir / "runs").iterdir()):
        if not (run / "clients.csv").is_file():
            continue
        policy, seed = run.name.rsplit("-seed", 1)
        order.append(policy)
        curves.append(pd.read_csv(run / "rounds.csv").assign(policy=policy, seed=int(seed)))
        parts.append(participation(pd.read_csv(run / "clients.csv")).assign(policy=policy, seed=int(seed)))
    df = pd.concat(curves, ignore_index=True)
    df["mb-up"] = df.groupby(["policy", "seed"])["bytes-up"].cumsum() / 1e6
    seeds = df.groupby("policy")["seed"].nunique()
    policies = _order(order)
    return (
        selection_table(df, policies, pd.concat(parts, ignore_index=True))
        + "\n\nseeds per policy: "
        + ", ".join(f"{p} {seeds[p]}" for p in policies)
    )


def main(argv: list[str]) -> int:
    for out in argv or ["experiments/out/devices-all"]:
        print(f"\n{out}\n")
        print(selection_table_of(Path(out)))
        print()
        print(markdown(table(Path(out)).T))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
