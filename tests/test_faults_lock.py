"""Issue 24, row 1: one fedmm process per output directory (``fedmm.runlock``). A second
``fedmm simulate`` on a directory another process is writing (also with ``--overwrite`` or
``--resume``, on either engine) and a second benchmark on a benchmark directory are refused at
once, naming the directory and the other process; a lock left by a killed process does not block.

The other process is a real child process that holds the lock; every child is stopped by its
process id in a ``finally``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_faults_files import no_ray, run_dir, stopped_run  # noqa: F401  (fixtures)

from fedmm.runlock import LOCK_FILE, DirectoryBusy, directory_lock

ROOT = Path(__file__).resolve().parents[1]
HOLDER = """
import sys, time
from fedmm.runlock import directory_lock
with directory_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""
SMALL = [
    "--set",
    "dataset=synthetic",
    "--set",
    "dataset.num-train=40",
    "--set",
    "dataset.num-test=8",
    "--set",
    "partition=iid",
    "--set",
    "num-clients=2",
    "--set",
    "allocation=all",
    "--set",
    "local-epochs=1",
    "--set",
    "batch-size=8",
    "--set",
    "device=cpu",
    "--set",
    "num-server-rounds=1",
    "--quiet",
]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(30)


@contextmanager
def held_by_another_process(directory: Path) -> Iterator[subprocess.Popen]:
    """A child process holding ``directory``'s lock until the body ends (killed by its pid)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory)], stdout=subprocess.PIPE, text=True, env=_env()
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        _stop(proc)


def test_a_locked_directory_is_refused_naming_it_and_the_holder_then_free_after_the_holder_is_killed(tmp_path):
    target = tmp_path / "run"
    with held_by_another_process(target) as holder:
        with pytest.raises(
            DirectoryBusy,
            match=rf"output directory '{target}' is in use by another fedmm run "
            rf"\(process {holder.pid}\).*choose another --out",
        ):
            with directory_lock(target):
                pass
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(30)
        assert (target / LOCK_FILE).exists()  # the dead process left its lock file behind
        with directory_lock(target):  # ... which does not block: the kernel released its flock
            assert (target / LOCK_FILE).read_text().strip() == str(os.getpid())
    assert not (target / LOCK_FILE).exists()  # released and removed


def test_the_lock_is_reentrant_in_one_process_and_does_not_make_the_directory_non_empty(tmp_path):
    from fedmm.results import prepare_out_dir

    with directory_lock(tmp_path / "run") as path, directory_lock(tmp_path / "run"):
        assert prepare_out_dir(path, overwrite=False) == path  # only the lock file there: still empty
    assert not path.exists()  # created for the lock and still empty: removed again (nothing was written)


def cli_error(capsys, *argv: str) -> str:
    from fedmm.cli import main

    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("engine", ["ray", "inline"])
@pytest.mark.parametrize("flags", [(), ("--overwrite",)], ids=["plain", "overwrite"])
def test_simulate_on_a_directory_another_run_writes_is_refused_before_anything_starts(
    tmp_path, capsys, no_ray, engine, flags
):
    target = tmp_path / "run"
    with held_by_another_process(target) as holder:
        err = cli_error(capsys, "simulate", *SMALL, "--set", f"engine={engine}", "--out", str(target), *flags)
    assert f"output directory '{target}' is in use by another fedmm run (process {holder.pid})" in err
    assert [p.name for p in target.iterdir()] == [LOCK_FILE]  # nothing written (the killed holder left its lock)


def test_resume_of_a_directory_another_run_writes_is_refused(run_dir, capsys, no_ray):
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    with held_by_another_process(run_dir) as holder:
        err = cli_error(capsys, "simulate", "--resume", str(run_dir), "--quiet")
    assert f"'{run_dir}' is in use by another fedmm run (process {holder.pid})" in err and "--resume" in err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.name != LOCK_FILE} == before


def test_a_benchmark_on_a_directory_another_benchmark_writes_is_refused(tmp_path):
    from fedmm.bench import methods_benchmark, run_grid

    def never(*a, **k):
        raise AssertionError("a run started in a locked benchmark directory")

    with held_by_another_process(tmp_path / "bench") as holder:
        with pytest.raises(
            DirectoryBusy,
            match=rf"benchmark directory '{tmp_path / 'bench'}' is in use by another "
            rf"fedmm run \(process {holder.pid}\)",
        ):
            methods_benchmark(["synthetic"], ["fedavg"], [0], tmp_path / "bench", quick=True, simulate=never)
        with pytest.raises(DirectoryBusy, match=f"process {holder.pid}"):
            run_grid(None, [], [], [0], tmp_path / "bench" / "runs.csv", simulate=never)


def test_two_runs_started_together_on_one_out_one_runs_the_other_refuses(tmp_path):
    """Two real ``fedmm simulate`` processes (inline engine) on the same --out, started together: one
    finishes and owns every file; the other exits 2 naming the directory and the first's process."""
    out = tmp_path / "run"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from fedmm.cli import main; raise SystemExit(main())",
                "simulate",
                *SMALL,
                "--set",
                "engine=inline",
                "--set",
                f"seed={seed}",
                "--out",
                str(out),
                "--overwrite",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for seed in (1, 2)
    ]
    try:
        results = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            _stop(p)
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], results
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    assert f"'{out}' is in use by another fedmm run (process {procs[winner].pid})" in results[loser][1]
    assert "Traceback" not in results[loser][1]
    config = tomllib.loads((out / "config.toml").read_text())
    assert config["seed"] == (1, 2)[winner]  # the directory is the winner's alone
    assert not (out / LOCK_FILE).exists()
