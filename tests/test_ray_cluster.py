"""``ray-address``: ``fedmm simulate`` joins a running Ray cluster instead of starting its own.

The test starts a Ray head on loopback as its own child process (``ray start --head --block``, in a
session of its own, with its own port and temp directory) and stops it through that child's
process id, so it never touches another Ray instance on the machine (no ``ray stop``, no kill by
process name).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from fedmm.deploy import free_port
from fedmm.results import ROUNDS_FILE, SUMMARY_FILE

RAY = Path(sys.executable).with_name("ray")


def _wait_for_port(port: int, head: subprocess.Popen, seconds: float = 90.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"ray start --head exited with {head.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"the Ray head did not open port {port} within {seconds:.0f} s")


def _stop(head: subprocess.Popen) -> None:
    """SIGTERM to the head's own process group (``ray start --block`` then stops what it started),
    SIGKILL after 30 s."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        if head.poll() is not None:
            return
        os.killpg(head.pid, sig)
        try:
            head.wait(wait)
        except subprocess.TimeoutExpired:
            continue


@pytest.mark.integration
@pytest.mark.slow  # over a minute on 2 cores: `make test-slow`
def test_simulate_runs_on_a_ray_cluster_it_joins(tmp_path):
    port = free_port()
    temp = tempfile.mkdtemp(prefix="fedmm-ray-", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    head = subprocess.Popen(
        [
            str(RAY),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=2",
            "--num-gpus=0",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _wait_for_port(port, head)
        out = tmp_path / "run"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "fedmm.cli",
                "simulate",
                "--quiet",
                "--out",
                str(out),
                "--set",
                "dataset=synthetic",
                "--set",
                "num-clients=4",
                "--set",
                "partition=iid",
                "--set",
                "num-server-rounds=2",
                "--set",
                "local-epochs=1",
                "--set",
                f"ray-address=127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=400,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads((out / SUMMARY_FILE).read_text())
        assert summary["status"] == "completed" and summary["rounds"] == 2
        rounds = pd.read_csv(out / ROUNDS_FILE)
        assert rounds["round"].tolist() == [0, 1, 2] and (rounds["clients-ok"][1:] == 4).all()
        assert head.poll() is None, "the run must leave the cluster it joined running"
    finally:
        _stop(head)
        shutil.rmtree(temp, ignore_errors=True)
    assert head.returncode is not None


def test_a_ray_address_where_no_cluster_answers_is_one_error_naming_the_key(tmp_path):
    port = free_port()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedmm.cli",
            "simulate",
            "--quiet",
            "--out",
            str(tmp_path / "run"),
            "--set",
            "dataset=synthetic",
            "--set",
            "num-clients=2",
            "--set",
            "partition=iid",
            "--set",
            "num-server-rounds=1",
            "--set",
            f"ray-address=127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "RAY_gcs_rpc_server_connect_timeout_s": "5"},
    )
    assert proc.returncode != 0
    assert "ray-address" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
