"""A real SuperLink and SuperNodes on loopback, driven by `flwr run`: TLS, and a node that crashes."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from fedmm.deploy import CONNECTION, LocalDeployment

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def flwr_run(deployment: LocalDeployment, out: Path, rounds: int, extra: str = "") -> subprocess.Popen:
    run_config = (f"dataset='synthetic' partition='iid' num-clients={deployment.num_nodes} allocation='all' "
                  f"num-server-rounds={rounds} local-epochs=1 out-dir='{out}' {extra}")
    env = {**os.environ, "FLWR_HOME": str(deployment.flwr_home), "PATH": f"{BIN}:{os.environ['PATH']}",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    return subprocess.Popen([str(BIN / "flwr"), "run", ".", CONNECTION, "--stream", "--run-config", run_config],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_summary(out: Path, proc: subprocess.Popen, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (out / "summary.json").is_file():
            return json.loads((out / "summary.json").read_text())
        time.sleep(1)
    proc.kill()
    raise AssertionError(f"no summary.json after {timeout:.0f} s; flwr output:\n{proc.communicate()[0][-3000:]}")


def test_tls_superlink_and_three_supernodes(tmp_path):
    out = tmp_path / "out"
    with LocalDeployment(tmp_path / "deploy", 3, tls=True) as deployment:
        proc = flwr_run(deployment, out, rounds=2)
        try:
            summary = wait_for_summary(out, proc, timeout=300)
        finally:
            proc.kill()
    assert summary["status"] == "completed" and summary["rounds"] == 2
    clients = pd.read_csv(out / "clients.csv")
    assert sorted(clients["partition-id"].unique()) == [0, 1, 2] and (clients["status"] == "ok").all()
    assert (out / "model.safetensors").is_file() and (out / "rounds.csv").is_file()


def test_a_crashed_node_does_not_stop_the_run_and_is_used_again_when_back(tmp_path):
    out = tmp_path / "out"
    with LocalDeployment(tmp_path / "deploy", 3) as deployment:
        proc = flwr_run(deployment, out, rounds=5, extra="round-timeout=40.0")
        try:
            deadline = time.monotonic() + 240
            while not (out / "rounds.csv").is_file() or len(pd.read_csv(out / "rounds.csv")) < 2:
                assert time.monotonic() < deadline, "round 1 did not finish"
                time.sleep(0.5)
            deployment.stop_node(2)  # the machine of partition 2 dies after round 1
            while len(pd.read_csv(out / "rounds.csv")) < 3:
                assert time.monotonic() < deadline + 120, "round 2 did not finish"
                time.sleep(0.5)
            deployment.start_node(2)  # and comes back
            summary = wait_for_summary(out, proc, timeout=400)
        finally:
            proc.kill()
    assert summary["status"] == "completed" and summary["rounds"] == 5
    clients = pd.read_csv(out / "clients.csv")
    failed = clients[(clients["partition-id"] == 2) & (clients["status"] != "ok")]
    assert len(failed) >= 1, clients.to_string()  # the failure is recorded
    back = clients[(clients["partition-id"] == 2) & (clients["status"] == "ok") & (clients["round"] > failed["round"].max())]
    assert len(back) >= 1, clients.to_string()  # the node that came back trained again
    rounds = pd.read_csv(out / "rounds.csv")
    assert rounds["clients-ok"].iloc[1:].min() >= 2  # every round aggregated the replies that came
