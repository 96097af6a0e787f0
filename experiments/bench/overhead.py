"""Framework overhead: the same federated training through fedmm's Flower simulation and through a
plain in-process PyTorch loop, side by side in one run.

Both train the same model (same init), on the same client partitions, with the same seed, rounds,
epochs, batch size and optimizer, every client selected every round. The plain loop is hand-written
(model.train(), shuffled mini-batches, cross-entropy, SGD step; FedAvg of state dicts) and runs
the clients one after another in this process with one torch thread, as every fedmm client trains
(``client-num-cpus`` = 1); fedmm runs them as Ray
actors with `client-num-cpus` CPUs each (engine ray) and one after another in this process (engine
inline, the same threads as the plain loop).

Prints the start-up (from the call until round 1 starts: Ray's start, the initial model's
evaluation; the plain loop's client tensors) and the median steady-state round time of each, their
ratio, and the final accuracies. Start-up used to be round 1's time minus a steady round, which is
only noise (and could be negative) for an engine without start-up; it is now measured directly.
The column "inline, np.load decoder" is the inline engine with Flower's own ``Array.numpy()``
(``np.load``, which parses every array's header with ``ast.literal_eval``) instead of
``fedmm.records.array_numpy``: the decoder before and after, in the same run. Usage:

    .venv/bin/python experiments/bench/overhead.py [--rounds 6] [--clients 10] [--epochs 1] [--engines ray,inline]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch

from fedmm.config import load_config
from fedmm.data import client_data
from fedmm.server.plan import prepare
from fedmm.simulation import simulate
from fedmm.training import evaluate


def plain_loop(plan, rounds: int) -> tuple[list[float], float, float]:
    """FedAvg over all clients with a hand-written local loop; returns round times, final acc and
    start-up (building the clients' tensors)."""
    called = time.perf_counter()
    run = plan.run
    global_model = copy.deepcopy(plan.model)
    datasets = [client_data(plan.dataset, plan.scenario, k) for k in range(len(plan.scenario.partitions))]
    times = []
    startup = time.perf_counter() - called
    for server_round in range(1, rounds + 1):
        started = time.perf_counter()
        states, weights = [], []
        for k, data in enumerate(datasets):
            model = copy.deepcopy(global_model).train()
            opt = torch.optim.SGD(model.parameters(), lr=run.lr, momentum=run.momentum, weight_decay=run.weight_decay)
            gen = torch.Generator().manual_seed(run.seed * 100_003 + server_round * 1_009 + k)
            n = data["y"].shape[0]
            for _ in range(run.local_epochs):
                order = torch.randperm(n, generator=gen)
                for start in range(0, n, run.batch_size):
                    idx = order[start : start + run.batch_size]
                    if idx.numel() < 2:
                        continue
                    batch = {m: v[idx] for m, v in data.items()}
                    opt.zero_grad(set_to_none=True)
                    loss = torch.nn.functional.cross_entropy(model(batch), batch["y"])
                    loss.backward()
                    opt.step()
            states.append(model.state_dict())
            weights.append(n)
        total = sum(weights)
        averaged = {}
        for key, ref in global_model.state_dict().items():
            mean = sum(w * s[key].double() for w, s in zip(weights, states)) / total
            averaged[key] = mean.round().to(ref.dtype) if not ref.is_floating_point() else mean.to(ref.dtype)
        global_model.load_state_dict(averaged)
        times.append(time.perf_counter() - started)
    acc = evaluate(global_model, plan.dataset.test, plan.objective, device=torch.device("cpu"))["acc"]
    return times, acc, startup


def fedmm_simulation(plan, out_dir: Path) -> tuple[list[float], float, float, float]:
    """Round times, final accuracy, total wall time and start-up: from the call until round 1's
    training began (the time round 1's row arrived, less its training time and evaluation)."""
    rows, arrived = [], []

    def on_round(row: dict) -> None:
        arrived.append(time.perf_counter())
        rows.append(row)

    started = time.perf_counter()
    simulate(plan.run, out_dir, plan=plan, on_round=on_round, overwrite=True)  # a rerun replaces its results
    wall = time.perf_counter() - started
    times = [r["seconds"] for r in rows if r["round"] > 0]
    # round 0's row arrives after the engine started and the initial model was evaluated; round 1
    # starts right after it (before its row, round 1 trains for rows[1]["seconds"] and is evaluated)
    startup = arrived[0] - started
    return times, rows[-1]["test/acc"], wall, startup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--dataset", default="hapt")
    parser.add_argument("--engines", default="ray,inline", help="comma-separated fedmm engines to time")
    args = parser.parse_args()
    flat = [
        f"dataset={args.dataset}",
        "partition=iid",
        f"num-clients={args.clients}",
        "allocation=all",
        "selection=all",
        f"num-server-rounds={args.rounds}",
        f"local-epochs={args.epochs}",
        "device=cpu",
    ]
    run = load_config(None, flat)
    # every fedmm client trains with client-num-cpus = 1 torch thread (fedmm/clients/app.py); the
    # plain loop gets the same, so that the ratio compares the frameworks, not thread counts (two
    # OpenMP threads on a busy 2-core machine spin-wait: the plain loop measured 2.7x slower so)
    torch.set_num_threads(max(1, int(run.client_num_cpus)))
    out_dir = Path("experiments/out/overhead")
    plain_times, plain_acc, plain_startup = plain_loop(prepare(run), args.rounds)
    fedmm_runs = {}
    for engine in [e.strip() for e in args.engines.split(",") if e.strip()]:
        engine_run = load_config(None, [*flat, f"engine={engine}"])
        fedmm_runs[engine] = fedmm_simulation(prepare(engine_run, out_dir / engine, overwrite=True), out_dir / engine)
    if "inline" in fedmm_runs:  # the same inline run with Flower's np.load decoder (before array_numpy)
        import fedmm.protocol
        import fedmm.records

        fast = fedmm.records.array_numpy
        fedmm.records.array_numpy = fedmm.protocol.array_numpy = lambda array: array.numpy()
        try:
            engine_run = load_config(None, [*flat, "engine=inline"])
            fedmm_runs["inline, np.load decoder"] = fedmm_simulation(
                prepare(engine_run, out_dir / "inline-npload", overwrite=True), out_dir / "inline-npload"
            )
        finally:
            fedmm.records.array_numpy = fedmm.protocol.array_numpy = fast

    plain_steady = statistics.median(plain_times[1:])
    steady = {e: statistics.median(times[1:]) for e, (times, *_) in fedmm_runs.items()}
    print(
        f"# fedmm overhead: {args.dataset}, {args.clients} clients (all selected), {args.rounds} rounds, "
        f"{args.epochs} local epoch(s), {torch.get_num_threads()} torch threads in the plain loop and inline\n"
    )
    print("| | plain PyTorch loop | " + " | ".join(f"fedmm, engine {e}" for e in fedmm_runs) + " |")
    print("|---|---|" + "---|" * len(fedmm_runs))
    print(
        f"| start-up (s, until round 1 starts) | {plain_startup:.2f} | "
        + " | ".join(f"{fedmm_runs[e][3]:.2f}" for e in fedmm_runs)
        + " |"
    )
    print(
        f"| steady-state round (s, median of rounds 2..{args.rounds}) | {plain_steady:.2f} | "
        + " | ".join(f"{steady[e]:.2f}" for e in fedmm_runs)
        + " |"
    )
    print(
        "| ratio fedmm / plain (steady round) | | "
        + " | ".join(f"**{steady[e] / plain_steady:.2f}**" for e in fedmm_runs)
        + " |"
    )
    print(
        f"| final test accuracy | {plain_acc:.4f} | " + " | ".join(f"{fedmm_runs[e][1]:.4f}" for e in fedmm_runs) + " |"
    )
    print("| wall time of the whole run (s) | | " + " | ".join(f"{fedmm_runs[e][2]:.1f}" for e in fedmm_runs) + " |")


if __name__ == "__main__":
    main()
