"""Federation size: round 1, later rounds, the update pass and memory at N = 100, 1,000, 10,000 clients.

Every run is a real ``fedmm simulate`` (Flower's simulation engine on Ray, this machine's cores):
``synthetic`` (2 modalities, 20 train rows per client), IID, 1 local epoch, ``clients-per-round``
K (default 100) chosen by ``selection=random``. Two rosters, side by side (``--paths``):

* ``old``: discovery as in a deployment, one ``query`` message per node before the first selection;
* ``new``: the roster registered from the scenario (what ``fedmm simulate`` does): no query at all.

Per (N, path), a ``random`` run of ``--rounds`` rounds gives round 1 and the median of the later
rounds (the ``seconds`` of each round row: Ray's start-up is not in them; round 1 has the
discovery, timed alone as ``discovery s``), and a one-round ``divfl`` run gives the update pass
(every client trains one epoch before round 1, in batches; timed from the strategy's first
``configure_update_pass`` to the end of its last ``aggregate_update_pass``, in the server thread)
and its cost per client. Each run is its own process, so the peak RSS is that run's: the
driver's (``ru_maxrss``: the server loop, Flower's in-memory SuperLink state, the scenario) and
the largest Ray worker's and all of Ray's processes together (sampled from ``/proc`` every 0.2 s).

Both paths use fedmm's message delivery in the engine (``fedmm.delivery.fast_delivery``); for
the numbers of an older fedmm (Flower's own delivery, no scenario roster) run this script with
``PYTHONPATH`` pointing at its checkout and ``--paths old``.

With ``--devices model`` (also ``--devices off model``: both, side by side) every client gets a
device profile and the simulated clock runs (30 % of the clients online: the policy sees only
those); ``--engine inline`` runs every client in the driver process (no Ray: the driver's peak RSS
is the whole run's); ``--selections random oort`` times the rounds of each policy.

Usage: ``.venv/bin/python experiments/bench/scale.py [--sizes 100 1000 10000] [--paths old new]
[--rounds 4] [--clients-per-round 100] [--skip-divfl-old] [--engine inline] [--devices off model]
[--selections random oort]``. Benchmarks are not tests: nothing
here runs in the test suite.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

try:
    import fedmm  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without ``pip install -e .``
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

ROWS_PER_CLIENT = 20
#: The server's validation set: a fixed number of rows at every N (a cross-device server's held-out
#: set does not grow with the number of clients), so that a later round at 100,000 clients and one
#: at 10,000 do the same central evaluation and differ by what grows with N only.
VALIDATION_ROWS = 3000


#: ``--devices model``: device profiles and the simulated clock on, 30 % of the clients online.
DEVICE_OVERRIDES = ("devices=model", "devices.online-share=0.3")


def _config(n: int, selection: str, rounds: int, k: int, engine: str = "ray", devices: str = "off") -> list[str]:
    extra = [f"engine={engine}"] if engine != "ray" else []  # the default engine's config text stays as before
    extra += list(DEVICE_OVERRIDES) if devices == "model" else []
    return [
        "dataset=synthetic",
        f"dataset.num-train={ROWS_PER_CLIENT * n}",
        f"validation-fraction={min(0.15, VALIDATION_ROWS / (ROWS_PER_CLIENT * n))}",
        "partition=iid",
        f"num-clients={n}",
        "strategy=fedavg",
        f"selection={selection}",
        f"clients-per-round={min(k, n)}",
        f"num-server-rounds={rounds}",
        "local-epochs=1",
        "batch-size=32",
        "device=cpu",
        "seed=0",
        "client-num-cpus=1",
        *extra,
    ]


def _descendants_rss() -> tuple[int, int]:
    """(largest, total) resident set of this process's descendants, in bytes (from ``/proc``)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    mine, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - mine
        mine |= frontier
    sizes = []
    for pid in mine:
        try:
            with open(f"/proc/{pid}/statm") as f:
                sizes.append(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError):
            continue
    return (max(sizes), sum(sizes)) if sizes else (0, 0)


def one_run(n: int, path: str, selection: str, rounds: int, k: int, engine: str = "ray", devices: str = "off") -> dict:
    """One simulation in this process: its round times, update pass, discovery and peak memory."""
    from fedmm.config import load_config
    from fedmm.simulation import simulate
    from fedmm.strategies.fedavg import ModalityAwareFedAvg

    timers: dict[str, float] = {}

    def timed(name: str, start: str, end: str, until_last: bool = False) -> None:
        """Time from the first ``start`` call to the end of the first ``end`` call (``until_last``:
        of the last one: the update pass is a loop over batches in round 1 only)."""
        begin, finish = getattr(ModalityAwareFedAvg, start), getattr(ModalityAwareFedAvg, end)

        def started(self, *args, **kwargs):
            timers.setdefault(f"{name}-start", time.perf_counter())
            return begin(self, *args, **kwargs)

        def finished(self, *args, **kwargs):
            out = finish(self, *args, **kwargs)
            if f"{name}-start" in timers and (until_last or f"{name}-end" not in timers):
                timers[f"{name}-end"] = time.perf_counter()
            return out

        setattr(ModalityAwareFedAvg, start, started)
        setattr(ModalityAwareFedAvg, end, finished)

    timed("discovery", "configure_discovery", "aggregate_discovery")
    timed("pass", "configure_update_pass", "aggregate_update_pass", until_last=True)
    passed: list[int] = []
    original_pass = ModalityAwareFedAvg.configure_update_pass

    def counting_pass(self, arrays):
        messages = original_pass(self, arrays)
        passed.append(len(messages))
        return messages

    ModalityAwareFedAvg.configure_update_pass = counting_pass
    peak = {"worker": 0, "ray": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            largest, total = _descendants_rss()
            peak["worker"], peak["ray"] = max(peak["worker"], largest), max(peak["ray"], total)

    threading.Thread(target=sample, daemon=True).start()
    rows: list[dict] = []
    run = load_config(None, _config(n, selection, rounds, k, engine, devices))
    kwargs = {}
    if "roster_from_scenario" in inspect.signature(simulate).parameters:
        kwargs["roster_from_scenario"] = path == "new"
    elif path == "new":
        raise SystemExit("this fedmm has no roster from the scenario: run --paths old")
    simulate(run, None, on_round=rows.append, **kwargs)
    done.set()
    seconds = [float(r["seconds"]) for r in rows if r["round"] >= 1]

    def span(name: str) -> float:
        return timers[f"{name}-end"] - timers[f"{name}-start"] if f"{name}-end" in timers else float("nan")

    return {
        "n": n,
        "path": path,
        "selection": selection,
        "engine": engine,
        "devices": devices,
        "round1": seconds[0],
        "later": statistics.median(seconds[1:]) if len(seconds) > 1 else float("nan"),
        "discovery": span("discovery"),
        "pass": span("pass"),
        "pass-clients": sum(passed),
        "rss-driver": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rss-worker": peak["worker"],
        "rss-ray": peak["ray"],
    }


def _child(n: int, path: str, selection: str, rounds: int, k: int, engine: str = "ray", devices: str = "off") -> dict:
    """:func:`one_run` in a fresh process (its own peak RSS); the result comes back as JSON."""
    cmd = [sys.executable, __file__, "--one", str(n), path, selection, str(rounds), str(k), engine, devices]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        sys.stderr.write(out.stderr[-3000:])
        raise SystemExit(f"run N={n} {path} {selection} failed (exit {out.returncode})")
    return json.loads(lines[-1][len("RESULT ") :])


def _gb(value: float) -> str:
    return f"{value / 2**30:.2f}"


def table(results: list[dict]) -> str:
    """The Markdown table: one row per (N, path, engine, devices) and round-timing selection."""
    head = (
        "| N | path | engine | devices | selection | round 1 s | discovery s | median later round s | "
        "update pass s (divfl) | pass ms/client | peak RSS GB: driver / largest worker / all Ray |"
    )
    lines = [head, "|" + "---|" * 11]
    setup = [(r["n"], r["path"], r.get("engine", "ray"), r.get("devices", "off")) for r in results]
    keyed = {(*s, r["selection"]): r for s, r in zip(setup, results)}
    for key in dict.fromkeys(setup):
        n, path, engine, devices = key
        div = keyed.get((*key, "divfl"))
        timed = [r for (*k, sel), r in keyed.items() if tuple(k) == key and sel != "divfl"] or [None]
        for rnd in timed:
            lines.append(_row(n, path, engine, devices, rnd, div))
    return "\n".join(lines)


def _row(n: int, path: str, engine: str, devices: str, rnd: dict | None, div: dict | None) -> str:
    """One table row: the timed-rounds run ``rnd`` and the update-pass run ``div`` of one setup."""
    cells = [f"{n:,}", path, engine, devices, rnd["selection"] if rnd else "-"]
    cells += [f"{rnd['round1']:.2f}", f"{rnd['discovery']:.2f}", f"{rnd['later']:.2f}"] if rnd else ["-"] * 3
    if div:
        cells += [f"{div['pass']:.1f}", f"{1e3 * div['pass'] / max(1, div['pass-clients']):.1f}"]
    else:
        cells += ["-", "-"]
    mem = [r for r in (rnd, div) if r]
    cells.append(" / ".join(_gb(max(r[k] for r in mem)) for k in ("rss-driver", "rss-worker", "rss-ray")))
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--paths", nargs="+", choices=("old", "new"), default=["old", "new"])
    parser.add_argument("--rounds", type=int, default=4, help="rounds of the random run (round 1 + later ones)")
    parser.add_argument("--clients-per-round", type=int, default=100)
    parser.add_argument("--no-divfl", action="store_true", help="skip the update-pass runs")
    parser.add_argument(
        "--skip-divfl-old",
        action="store_true",
        help="the update pass on the new path only (the pass is the same; old adds discovery)",
    )
    parser.add_argument(
        "--engine",
        choices=("ray", "inline"),
        default="ray",
        help="ray: Flower's simulation engine; inline: every client in this process",
    )
    parser.add_argument(
        "--devices",
        nargs="+",
        choices=("off", "model"),
        default=["off"],
        help="model: device profiles and the simulated clock on (30 %% of the clients online)",
    )
    parser.add_argument(
        "--selections",
        nargs="+",
        default=["random"],
        help="policies of the timed rounds (random, oort, ...), each its own run",
    )
    parser.add_argument(
        "--one", nargs=7, metavar=("N", "PATH", "SELECTION", "ROUNDS", "K", "ENGINE", "DEVICES"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.one:
        n, path, selection, rounds, k, engine, devices = args.one
        print(
            "RESULT " + json.dumps(one_run(int(n), path, selection, int(rounds), int(k), engine, devices)), flush=True
        )
        return
    results = []
    for n in args.sizes:
        for path in args.paths:
            for devices in args.devices:
                runs = [(s, args.rounds) for s in args.selections]
                if not args.no_divfl and not (args.skip_divfl_old and path == "old"):
                    runs.append(("divfl", 1))
                for selection, rounds in runs:
                    started = time.perf_counter()
                    results.append(_child(n, path, selection, rounds, args.clients_per_round, args.engine, devices))
                    print(
                        f"N={n} {path} {args.engine} devices={devices} {selection}: {json.dumps(results[-1])} "
                        f"({time.perf_counter() - started:.0f} s)",
                        file=sys.stderr,
                        flush=True,
                    )
    print(table(results))


if __name__ == "__main__":
    main()
