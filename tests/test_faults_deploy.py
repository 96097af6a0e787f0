"""Faults around deployment (issue 13): the deploy helper under signals, a SuperLink port already
taken, a SuperLink that dies at start-up, and `flwr run .` with a federation smaller than the run.

Every process a test starts is found by its ``FLWR_HOME`` (a path below the test's own temporary
directory) or its pid, and killed at the end, also when the test fails."""

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fedmm.deploy import DeployError, LocalDeployment, free_port
from fedmm.strategies.fedavg import ModalityAwareFedAvg
from fedmm.strategies.roster import FederationTooSmall
from fedmm.strategies.selection import build_policy

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


# -- processes ---------------------------------------------------------------------------------------
def pids_below(root: Path) -> set[int]:
    """Live processes whose ``FLWR_HOME`` lies below ``root`` (all Flower and Ray processes a
    deployment or `flwr run` under ``root`` started; they inherit it)."""
    prefix = b"FLWR_HOME=" + str(root).encode()
    found = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(v == prefix or v.startswith(prefix + b"/") for v in env) and alive(int(pid)):
            found.add(int(pid))
    return found


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.fixture
def reaper(tmp_path):
    """Kills, at the end of the test, every process below ``tmp_path`` and every Popen handed to it."""
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for _ in range(3):  # a dying parent may still start a child
        for pid in pids_below(tmp_path):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)


def _default_signals() -> None:
    """In the child: SIGINT/SIGHUP as a terminal would deliver them (a background job's shell
    ignores SIGINT, and the helper keeps an inherited 'ignore')."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def deploy_local(workdir: Path, port: int, reaper: list) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{BIN}:{os.environ['PATH']}"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedmm.cli",
            "deploy",
            "local",
            "--nodes",
            "1",
            "--port",
            str(port),
            "--workdir",
            str(workdir),
        ],
        cwd=workdir.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_signals,
    )
    reaper.append(proc)
    return proc


# -- the deploy helper under signals ---------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_deploy_local_stops_every_process_it_started_on_a_signal(tmp_path, reaper, sig):
    workdir = tmp_path / "deploy"
    proc = deploy_local(workdir, free_port(), reaper)
    deadline = time.monotonic() + 90
    node = workdir / "node0"
    # up: the SuperNode (started last) runs, and its SuperExec has started in a session of its own
    while len([p for p in pids_below(node)]) < 2:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"the deployment did not come up: {proc.communicate(timeout=5)}"
        time.sleep(0.5)
    time.sleep(1.0)
    started = pids_below(workdir)
    assert len(started) >= 3  # SuperLink, SuperNode, its SuperExec (at least)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopped every process" in out
    time.sleep(0.5)
    assert not [p for p in started if alive(p)], f"left running: {[p for p in started if alive(p)]}"
    assert not pids_below(workdir)


# -- a port in use ---------------------------------------------------------------------------------
@pytest.mark.integration
def test_deploy_local_on_a_taken_port_is_one_error_naming_it_and_starts_nothing(tmp_path, reaper):
    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", 0))
        foreign.listen()
        port = foreign.getsockname()[1]
        workdir = tmp_path / "deploy"
        proc = deploy_local(workdir, port, reaper)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("the helper kept running on a taken port (it printed success and started nodes)")
    assert proc.returncode != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedmm: error: "), err
    assert f"port {port}" in lines[0] and "--port" in lines[0] and "Traceback" not in err
    assert "SuperLink on" not in out
    assert not pids_below(workdir) and not (workdir / "superlink.log").exists()


@pytest.mark.integration
def test_a_superlink_that_dies_at_start_up_is_reported_with_its_log(tmp_path, reaper, monkeypatch):
    import fedmm.deploy as deploy

    def broken_certificates(out_dir, *args, **kwargs):
        out = Path(out_dir)
        out.mkdir(parents=True)
        paths = deploy.Certificates(out / "ca.crt", out / "server.pem", out / "server.key")
        for path in paths.__dict__.values():
            path.write_text("not a PEM file\n")
        return paths

    monkeypatch.setattr(deploy, "generate_certificates", broken_certificates)
    workdir = tmp_path / "deploy"
    started = time.monotonic()
    with pytest.raises(DeployError, match=r"SuperLink exited at start-up .*superlink\.log"):
        LocalDeployment(workdir, 1, tls=True).start()
    assert time.monotonic() - started < 25  # not the 30 s wait for a port that never opens
    assert not pids_below(workdir)


# -- the wait for nodes ----------------------------------------------------------------------------
class TwoNodes:
    def get_node_ids(self):
        return [11, 12]


def test_the_wait_for_nodes_is_bounded_and_names_both_numbers_and_the_command():
    strategy = ModalityAwareFedAvg(
        policy=build_policy("all", seed=0),
        clients_per_round=3,
        min_available_nodes=3,
        run_config="x",
        round_timeout=0.5,
    )
    raised: list[BaseException] = []

    def discover():
        try:
            strategy.configure_discovery(1, TwoNodes())
        except BaseException as err:  # noqa: BLE001 - handed to the test
            raised.append(err)

    thread = threading.Thread(target=discover, daemon=True)
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive(), "discover still waits for a third node after 10 s (round-timeout was 0.5 s)"
    assert len(raised) == 1 and isinstance(raised[0], FederationTooSmall)
    message = str(raised[0])
    assert "only 2 of the 3 nodes" in message and "num-supernodes=3" in message and "min-available-nodes" in message


# -- `flwr run .` ----------------------------------------------------------------------------------
def flwr_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a test's `flwr run .`: its own ``FLWR_HOME`` and its own local SuperLink.

    Flower's CLI starts the local SuperLink on fixed ports (39091, 39093) whatever ``FLWR_HOME`` is,
    and reuses any SuperLink that answers there: without ports of its own, a test's run would go to
    the SuperLink of the other `flwr run` test running at the same time on the other xdist worker,
    which that test's reaper then kills in the middle of the stream."""
    return {
        **os.environ,
        "FLWR_HOME": str(tmp_path / "flwr-home"),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "PYTHONPATH": str(REPO),
    }


@pytest.mark.integration
@pytest.mark.slow  # over a minute on 2 cores: `make test-slow`
def test_flwr_run_on_a_too_small_federation_ends_with_the_clear_message(tmp_path, reaper):
    # Flower's default local federation: 2 simulated SuperNodes; the run wants 3 clients
    run_config = (
        f"dataset='synthetic' partition='iid' num-clients=3 allocation='all' num-server-rounds=1 "
        f"local-epochs=1 round-timeout=15.0 out-dir='{tmp_path / 'out'}'"
    )
    env = {**flwr_env(tmp_path), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    proc = subprocess.Popen(
        [str(BIN / "flwr"), "run", ".", "--stream", "--run-config", run_config],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    reaper.append(proc)
    try:
        out, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("flwr run still waits for nodes after 240 s (round-timeout was 15 s)")
    errors = [line for line in out.splitlines() if line.startswith("fedmm: error:")]
    assert len(errors) == 1, out[-3000:]
    assert "only 2 of the 3 nodes" in errors[0] and '--federation-config "num-supernodes=3"' in errors[0]
    assert "Traceback" not in out
    assert "waiting for nodes: 2 of 3 connected" in out  # progress while it waited


def readme_flwr_demo_commands() -> list[str]:
    """The quick tour's lines that run the demo federation through `flwr run .`."""
    text = (REPO / "README.md").read_text()
    lines = [line.split("  #")[0].strip() for line in text.splitlines()]
    export = [line for line in lines if line.startswith('export PATH="$PWD/.venv/bin:$PATH"')]
    run = [line for line in lines if line.startswith("flwr run . --stream --federation-config")]
    assert len(export) == 1 and len(run) == 1, "the README's quick tour lost its `flwr run .` commands"
    return [export[0], run[0]]


@pytest.mark.integration
def test_the_readme_flwr_run_commands_run_the_demo_federation(tmp_path, reaper):
    export, run = readme_flwr_demo_commands()
    assert re.search(r"num-supernodes=20\b", run) and "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1" in export
    out_dir = tmp_path / "out"
    # the README's commands as written; only shorter (1 round of 1 epoch) and into the test's directory
    script = f"{export}\n{run} --run-config \"num-server-rounds=1 local-epochs=1 out-dir='{out_dir}'\"\n"
    env = {k: v for k, v in flwr_env(tmp_path).items() if k != "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"}
    proc = subprocess.Popen(
        ["bash", "-c", script], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    reaper.append(proc)
    try:
        out, _ = proc.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        pytest.fail("the README's `flwr run .` did not finish within 400 s")
    assert proc.returncode == 0, out[-3000:]
    assert "Starting local SuperLink" in out, out[-3000:]  # its own, not one another run left
    assert "20 simulated SuperNodes" in out, out[-3000:]
    # the ServerApp's progress reaches the stream: one line per round, then the final accuracy
    assert re.search(r"round 1/1  test/acc \d\.\d{4}  val/acc \d\.\d{4}  weak ", out), out[-3000:]
    assert "fedmm: final test/acc" in out, out[-3000:]
    summary = (out_dir / "summary.json").read_text()
    assert '"status": "completed"' in summary and '"rounds": 1' in summary, out[-3000:]
