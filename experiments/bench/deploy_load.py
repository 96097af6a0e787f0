"""Load: a real deployment of N SuperNode processes on loopback, with TLS and SuperNode
authentication, driven by `flwr run` for a few rounds.

Starts one SuperLink (``--enable-supernode-auth``, TLS with generated certificates) and N SuperNodes
(each its own registered key pair, ``partition-id=i``) with :class:`fedmm.deploy.LocalDeployment`,
submits a run in which every node trains every round (``clients-per-round = N``), and measures

* the time of each round (the server's ``seconds`` in ``rounds.csv``; round 1 includes the
  discovery of the N nodes);
* the peak resident memory (``VmHWM`` of ``/proc/<pid>/status``, the kernel's high-water mark) of
  the SuperLink process, of the ServerApp process it starts, of one SuperNode process, and of the
  largest ClientApp process that node started (one per message, sampled while it lives);
* the peak of the summed PSS (proportional set size: each shared page divided among the processes
  that map it, so shared libraries such as torch count once) of all processes the deployment
  started, sampled every 0.5 s: the memory the whole deployment needs on one machine.

Prints one table. Usage (it starts 2 N + 2 long-lived processes; size N to the machine):

    .venv/bin/python experiments/bench/deploy_load.py [--nodes 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd

from fedmm.deploy import CONNECTION, LocalDeployment, processes_by_flwr_home, stop_on_signals

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _status(pid: int) -> dict[str, str]:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return dict(line.split(":", 1) for line in lines if ":" in line)


def _kib(value: str | None) -> int:
    return int(value.split()[0]) if value else 0


def _pss(pid: int) -> int:
    """Proportional set size in KiB (0 for a process that is gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def processes_below(root: Path) -> dict[int, str]:
    """Live processes whose ``FLWR_HOME`` lies below ``root`` (everything the deployment and the
    processes Flower starts from it), with the name of the ``FLWR_HOME`` directory."""
    return {pid: home.relative_to(root).parts[0] for pid, home in processes_by_flwr_home(root).items() if home != root}


#: The bench stops the deployment when the machine's available memory falls below this (it is shared).
MIN_AVAILABLE_MIB = 2048


def _mem_available_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return 1 << 40


class Sampler(threading.Thread):
    """Every ``every`` seconds: the peak RSS high-water mark per (home, kind) of process and the
    summed PSS of all processes below ``root``."""

    def __init__(self, root: Path, every: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.root, self.every = root, every
        self.peak: dict[tuple[str, str], int] = {}
        self.peak_total = 0
        self.most_clientapps = 0
        self.least_available = _mem_available_kib()
        self.halt = threading.Event()
        #: Set when the machine runs short of memory (the bench then stops the deployment).
        self.short_of_memory = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            total = clientapps = 0
            for pid, home in processes_below(self.root).items():
                status = _status(pid)
                total += _pss(pid)
                cmd = _cmdline(pid)
                kind = next(
                    (
                        k
                        for k in (
                            "flwr-serverapp",
                            "flwr-clientapp",
                            "flower-superexec",
                            "flower-superlink",
                            "flower-supernode",
                            "flwr ",
                        )
                        if k in cmd
                    ),
                    "other",
                )
                clientapps += kind == "flwr-clientapp"
                key = (home, kind)
                self.peak[key] = max(self.peak.get(key, 0), _kib(status.get("VmHWM")))
            self.peak_total = max(self.peak_total, total)
            self.most_clientapps = max(self.most_clientapps, clientapps)
            self.least_available = min(self.least_available, _mem_available_kib())
            if self.least_available < MIN_AVAILABLE_MIB * 1024:
                self.short_of_memory.set()
            self.halt.wait(self.every)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients-per-round", type=int, default=0, help="nodes that train each round (0: all)")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory")
    parser.add_argument(
        "--state",
        choices=("memory", "file"),
        default="memory",
        help="the SuperLink's state: in memory (Flower's default), or in a SQLite file (--database)",
    )
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fedmm-deploy-load-"))
    out = workdir / "out"
    started = time.perf_counter()
    with (
        stop_on_signals(),
        LocalDeployment(
            workdir / "deploy", args.nodes, tls=True, auth=True, state_file=args.state == "file"
        ) as deployment,
    ):
        up = time.perf_counter() - started
        sampler = Sampler(deployment.workdir)
        sampler.start()
        run_config = (
            f"dataset='synthetic' partition='iid' num-clients={args.nodes} allocation='all' "
            f"clients-per-round={args.clients_per_round or args.nodes} num-server-rounds={args.rounds} "
            f"{'selection=' + repr('random') + ' ' if args.clients_per_round else ''}"  # all ignores the budget
            "local-epochs=1 "
            f"round-timeout=900.0 out-dir='{out}'"
        )
        env = {
            **os.environ,
            "FLWR_HOME": str(deployment.flwr_home),
            "PATH": f"{BIN}:{os.environ['PATH']}",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        }
        submitted = time.perf_counter()
        proc = subprocess.Popen(
            [str(BIN / "flwr"), "run", ".", CONNECTION, "--stream", "--run-config", run_config],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        stopped = ""
        try:
            deadline = time.monotonic() + 600 + 300 * args.rounds
            while not (out / "summary.json").is_file():
                if sampler.short_of_memory.is_set():
                    stopped = f"stopped by the bench: less than {MIN_AVAILABLE_MIB} MiB of memory left on this machine"
                    break
                if time.monotonic() > deadline:
                    stopped = f"stopped by the bench: no summary.json in time; logs in {deployment.workdir}"
                    break
                time.sleep(0.5)
            total = time.perf_counter() - submitted
            time.sleep(1.0)
        finally:
            proc.kill()
            proc.wait()
            sampler.halt.set()
            sampler.join()
        load = os.getloadavg()
    summary = json.loads((out / "summary.json").read_text()) if not stopped else {"status": stopped}
    rounds = pd.read_csv(out / "rounds.csv") if (out / "rounds.csv").is_file() else pd.DataFrame({"round": []})
    clients = pd.read_csv(out / "clients.csv") if (out / "clients.csv").is_file() else pd.DataFrame({"status": []})
    peak = sampler.peak
    mib = lambda kib: f"{kib / 1024:.0f}"  # noqa: E731
    node0 = {kind: v for (home, kind), v in peak.items() if home == "node0"}
    link = {kind: v for (home, kind), v in peak.items() if home == "superlink"}
    print(
        f"deployment: {args.nodes} SuperNodes + SuperLink on 127.0.0.1, TLS, SuperNode authentication "
        f"(registered keys), SuperLink state {args.state}; {args.rounds} rounds, "
        f"{args.clients_per_round or args.nodes} nodes train each round (synthetic, iid, 1 epoch)"
    )
    print(
        f"started (certificates, {args.nodes} key registrations, processes) in {up:.0f} s; "
        f"flwr run to {'summary.json' if not stopped else 'the stop'} {total:.0f} s; "
        f"load average at the end {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}"
    )
    print()
    print("| round | seconds | clients ok |")
    print("|---:|---:|---:|")
    for _, row in rounds[rounds["round"] > 0].iterrows():
        print(f"| {int(row['round'])} | {row['seconds']:.1f} | {int(row['clients-ok'])} |")
    print()
    print("| process | peak RSS (MiB) |")
    print("|---|---:|")
    print(f"| SuperLink (flower-superlink) | {mib(link.get('flower-superlink', 0))} |")
    print(f"| ServerApp (flwr-serverapp, started by the SuperLink) | {mib(link.get('flwr-serverapp', 0))} |")
    print(f"| SuperExec of the SuperLink (flower-superexec) | {mib(link.get('flower-superexec', 0))} |")
    print(f"| one SuperNode (flower-supernode, node 0) | {mib(node0.get('flower-supernode', 0))} |")
    print(f"| its SuperExec (flower-superexec) | {mib(node0.get('flower-superexec', 0))} |")
    print(f"| its largest ClientApp (flwr-clientapp, one per message) | {mib(node0.get('flwr-clientapp', 0))} |")
    print(f"| all processes together (peak of the summed PSS) | {mib(sampler.peak_total)} |")
    print(
        f"\nat most {sampler.most_clientapps} ClientApp processes at once; the machine's available memory fell "
        f"to {mib(sampler.least_available)} MiB (other work on the machine included)"
    )
    ok = (clients["status"] == "ok").sum()
    print(f"\nclients.csv: {ok} ok of {len(clients)} rows; run status {summary['status']} {summary.get('reason', '')}")


if __name__ == "__main__":
    main()
