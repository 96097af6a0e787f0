"""Ctrl-C (SIGINT) and SIGTERM sent to a real ``fedmm simulate`` process after round 1.

The run stops within seconds with one error line and exit code 128 + signal, the round under way
is dropped (not in ``rounds.csv``/``clients.csv``, not checkpointed), ``summary.json`` says
``interrupted``, Ray's processes are gone, and ``--resume`` ends with the metrics of an
uninterrupted run. Every process a test starts runs in its own session and is killed (its process
group and anything else left in the session, by pid) when the test ends, also when it fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from fedmm.checkpoint import CHECKPOINT_STATE, load_checkpoint
from fedmm.results import CLIENTS_FILE, ROUNDS_FILE, SUMMARY_FILE

pytestmark = pytest.mark.integration

ROUNDS = 4
#: Synthetic data, 3 clients, 1 local epoch; batch size 4 makes a round last a few seconds, so the
#: signal sent right after round 1's checkpoint lands while round 2 trains. With round-timeout 60
#: the old code (every later client ``no-reply`` after Ctrl-C) would take minutes to exit.
SETTINGS = [
    "dataset=synthetic",
    "partition=iid",
    "num-clients=3",
    "clients-per-round=3",
    f"num-server-rounds={ROUNDS}",
    "local-epochs=1",
    "batch-size=4",
    "device=cpu",
    "seed=1",
    "dataset.num-train=6000",
    "dataset.strengths=0.4,0.2",
    "round-timeout=60",
]
STOP_WITHIN_S = 30.0


def _session_pids(sid: int) -> list[int]:
    """Live (not zombie) processes of session ``sid``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


@contextmanager
def _fedmm(*args: str) -> Iterator[subprocess.Popen]:
    """``fedmm <args>`` in a new session; on exit its process group and every process left in its
    session are killed by pid."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedmm.cli", *args],
        start_new_session=True,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        left = _session_pids(proc.pid)
        for kill, pid in [(os.killpg, proc.pid), *((os.kill, pid) for pid in left)]:
            try:
                kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.communicate()


def _simulate_args(out: Path) -> list[str]:
    return ["simulate", *[a for s in SETTINGS for a in ("--set", s)], "--out", str(out), "--quiet"]


def _run_to_end(*args: str, timeout: float = 300) -> None:
    with _fedmm(*args) as proc:
        _, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, err


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("signals") / "whole"
    _run_to_end(*_simulate_args(out))
    return out


def _wait_for_round_1(proc: subprocess.Popen, out: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            if json.loads((out / CHECKPOINT_STATE).read_text())["round"] >= 1:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)
    raise AssertionError("round 1 did not finish in time")


@pytest.mark.parametrize(
    ("signum", "to_group"),
    [
        pytest.param(signal.SIGINT, True, id="sigint-ctrl-c"),
        pytest.param(signal.SIGTERM, False, id="sigterm-kill", marks=pytest.mark.slow),  # `make test-slow`
    ],
)
def test_signal_after_round_1_stops_the_run_and_resume_matches(tmp_path, uninterrupted, signum, to_group):
    # Ctrl-C reaches the terminal's whole process group (twice: the second must print nothing);
    # `kill PID` reaches fedmm's process only
    out = tmp_path / "split"
    with _fedmm(*_simulate_args(out)) as proc:
        _wait_for_round_1(proc, out)
        send = os.killpg if to_group else os.kill
        send(proc.pid, signum)
        sent = time.monotonic()
        if signum == signal.SIGINT:
            time.sleep(0.5)
            send(proc.pid, signum)
        try:
            _, err = proc.communicate(timeout=STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"fedmm simulate still ran {STOP_WITHIN_S:.0f} s after {signum.name}")
        seconds = time.monotonic() - sent
        deadline = time.monotonic() + 15  # Ray's processes exit with the driver's ray.shutdown
        while _session_pids(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _session_pids(proc.pid) == [], "Ray processes outlived fedmm simulate"
    assert proc.returncode == 128 + signum, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"fedmm: error: interrupted ({signum.name})"), err
    assert f"fedmm simulate --resume {out}" in lines[0]
    assert seconds < STOP_WITHIN_S

    summary = json.loads((out / SUMMARY_FILE).read_text())
    last = load_checkpoint(out).server_round
    assert summary["status"] == "interrupted" and signum.name in summary["reason"]
    assert 1 <= last < ROUNDS and summary["rounds"] == last
    assert pd.read_csv(out / ROUNDS_FILE)["round"].tolist() == list(range(last + 1))  # the cut round dropped
    assert pd.read_csv(out / CLIENTS_FILE)["round"].max() == last

    _run_to_end("simulate", "--resume", str(out), "--quiet")
    resumed = json.loads((out / SUMMARY_FILE).read_text())
    whole = json.loads((uninterrupted / SUMMARY_FILE).read_text())
    assert resumed["status"] == "completed" and resumed["rounds"] == ROUNDS
    for key, value in whole["final"].items():
        assert resumed["final"][key] == pytest.approx(value, abs=1e-9), key
    cols = ["round", "partition-id", "modalities-trained", "status", "num-examples"]
    pd.testing.assert_frame_equal(
        pd.read_csv(uninterrupted / CLIENTS_FILE)[cols], pd.read_csv(out / CLIENTS_FILE)[cols]
    )


def test_ctrl_c_stops_an_inline_run_and_its_resume_matches_the_ray_run(tmp_path, uninterrupted):
    # engine=inline runs the clients in fedmm's own process: the stop is checked before each client
    out = tmp_path / "inline"
    args = _simulate_args(out)
    args[-3:-3] = ["--set", "engine=inline"]  # before --out DIR --quiet
    with _fedmm(*args) as proc:
        _wait_for_round_1(proc, out)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=STOP_WITHIN_S)
    assert proc.returncode == 128 + signal.SIGINT, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fedmm: error: interrupted (SIGINT)"), err
    last = load_checkpoint(out).server_round
    assert json.loads((out / SUMMARY_FILE).read_text())["status"] == "interrupted" and 1 <= last < ROUNDS

    _run_to_end("simulate", "--resume", str(out), "--quiet")
    resumed = json.loads((out / SUMMARY_FILE).read_text())
    whole = json.loads((uninterrupted / SUMMARY_FILE).read_text())
    assert resumed["status"] == "completed"
    for key, value in whole["final"].items():
        assert resumed["final"][key] == pytest.approx(value, abs=1e-9), key
